"""What the service admits at once: image bytes held by all calls together (a byte budget), next to the cap
on calls the servicer keeps. Knows nothing of gRPC."""

from __future__ import annotations

from inference_service.errors import ServiceBusy


class ByteBudget:
    """Bytes of images and background images that all calls may hold at once, from the moment they arrive
    until the call's pipeline is done with them. Never waits: a call that would go over is refused (the caller
    retries shortly), so memory is bounded by the budget whatever the size or number of calls."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("the budget must be positive")
        self.capacity = capacity
        self.in_use = 0

    def holding(self) -> Holding:
        """A new, empty share of the budget for one call."""
        return Holding(self)


class Holding:
    """One call's share of the budget: grows as its bytes arrive, given back whole by release()."""

    def __init__(self, budget: ByteBudget) -> None:
        self._budget = budget
        self.held = 0

    def take(self, count: int) -> None:
        """Count `count` more bytes against the budget, or raise ServiceBusy (nothing taken) when they do not fit."""
        budget = self._budget
        if budget.in_use + count > budget.capacity:
            raise ServiceBusy(
                f"the service holds {budget.in_use:,} bytes of images (its limit is {budget.capacity:,}); retry shortly"
            )
        budget.in_use += count
        self.held += count

    def release(self) -> None:
        """Give back everything this call took; calling it again does nothing."""
        self._budget.in_use -= self.held
        self.held = 0
