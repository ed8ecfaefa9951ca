"""Model names the service once served and no longer does, each with what to name instead: a request naming
one is told the replacement, by the gateway (batches check the name before queueing) and by the inference
service (single images), in the same words."""

from __future__ import annotations

from types import MappingProxyType

# name -> why it went and what to use instead (one sentence, no trailing period).
RETIRED_MODELS = MappingProxyType({
    "isnet_fp16": (
        "its 8-bit weights (a dynamic quantisation, whatever the name said) ran 5x slower than isnet on CPUs and "
        "held 1.45 GB; use 'isnet_int8' (INT8, faster than isnet) or 'isnet' (the default)"
    ),
})


def retired_model_message(model: str) -> str | None:
    """The error text for a retired model's name, or None when the name was never retired."""
    why = RETIRED_MODELS.get(model)
    return f"model {model!r} is retired: {why}" if why else None
