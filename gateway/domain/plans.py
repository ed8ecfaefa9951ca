"""Subscription plans: the per-minute rate limits, monthly image quotas and batch access ops may change."""

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

_LOGGER = logging.getLogger(__name__)


class UnknownPlan(LookupError):
    """An account names a plan this gateway does not define; a configuration error, so 500 server_error."""


@dataclass(frozen=True, slots=True)
class Plan:
    """What one subscription plan allows."""

    name: str
    requests_per_minute: int
    # None means no monthly limit.
    monthly_images: int | None
    batch_allowed: bool


# The one place the commercial numbers live (the spec's "Rate Limits" table).
PLANS: Mapping[str, Plan] = MappingProxyType(
    {
        "basic": Plan(name="basic", requests_per_minute=10, monthly_images=50, batch_allowed=False),
        "pro": Plan(name="pro", requests_per_minute=60, monthly_images=500, batch_allowed=True),
        "enterprise": Plan(name="enterprise", requests_per_minute=300, monthly_images=None, batch_allowed=True),
    }
)


def get_plan(name: str) -> Plan:
    """Return the plan called `name` (case-insensitive), raising UnknownPlan for any other name."""
    try:
        return PLANS[name.strip().lower()]
    except KeyError:
        _LOGGER.error("unknown plan %r; known plans are %s", name, sorted(PLANS))
        raise UnknownPlan(name) from None
