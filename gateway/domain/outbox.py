"""What the domain needs of the webhook outbox: recording a delivery (gateway.jobs.webhook_outbox sends it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class WebhookOutbox(Protocol):
    """Records a webhook delivery in the same database, to be sent by the outbox's sender in the background."""

    async def enqueue(
        self, account_id: str, url: str, payload: Mapping[str, Any], *, batch_id: str | None = None
    ) -> str | None:
        """Record a delivery of `payload` to `url`; the delivery's id, or None where nothing was recorded."""
        ...
