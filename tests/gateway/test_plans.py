"""Plan table tests: the spec's numbers and the lookup's behaviour on unknown names."""

import pytest

from gateway.domain.plans import PLANS, Plan, UnknownPlan, get_plan


def test_plan_numbers_match_the_spec() -> None:
    """Basic 10/min 50/month, Pro 60/min 500/month, Enterprise 300/min unlimited; batch on Pro and up."""
    assert PLANS["basic"] == Plan("basic", requests_per_minute=10, monthly_images=50, batch_allowed=False)
    assert PLANS["pro"] == Plan("pro", requests_per_minute=60, monthly_images=500, batch_allowed=True)
    assert PLANS["enterprise"] == Plan(
        "enterprise", requests_per_minute=300, monthly_images=None, batch_allowed=True
    )
    assert set(PLANS) == {"basic", "pro", "enterprise"}


def test_get_plan_is_case_insensitive_and_refuses_unknown_names() -> None:
    """get_plan('Pro') finds pro; an unknown name raises UnknownPlan (a LookupError)."""
    assert get_plan("Pro") is PLANS["pro"]
    with pytest.raises(UnknownPlan):
        get_plan("platinum")
    assert issubclass(UnknownPlan, LookupError)


def test_plans_cannot_be_mutated_at_runtime() -> None:
    """The plan table and its plans are read-only, so no request can change another's limits."""
    with pytest.raises(TypeError):
        PLANS["basic"] = PLANS["pro"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        PLANS["basic"].requests_per_minute = 1000  # type: ignore[misc]
