"""Content negotiation for removal answers: the JSON envelope (the default) or the cut-out's bytes themselves.

The rule (docs/api.md, "The cut-out in the answer"): the image is sent only when the Accept header names an image
type on purpose, `image/png`, `image/jpeg`, `image/webp` or `image/*`, with a q-value above zero that beats
`application/json`'s: higher, or equal and named more precisely (`image/png, */*` is the image). `*/*` alone never opts in: curl, requests, aiohttp and browsers send it by default, and
every existing client that sets `output_format` expects the envelope. A header that admits neither the envelope
nor an image this request can produce is 406. `image/png, application/json` (a tie) is JSON, the
documented default; between image types the higher q wins, then the one listed first.
"""

from __future__ import annotations

from dataclasses import dataclass

from contract.options import OutputFormat
from gateway.errors import NotAcceptable

JSON = "application/json"
# output_format -> its media type, and back.
IMAGE_TYPES: dict[str, str] = {output_format.value: output_format.content_type for output_format in OutputFormat}
FORMATS = {media_type: output_format for output_format, media_type in IMAGE_TYPES.items()}
# At most this many media ranges are read from one header (a hostile header cannot make us loop long).
_MAX_RANGES = 32


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One element of an Accept header: type/subtype (either may be *), its q-value and its position."""

    type: str
    subtype: str
    q: float
    index: int

    def matches(self, media_type: str) -> bool:
        main, _, sub = media_type.partition("/")
        return self.type in ("*", main) and self.subtype in ("*", sub)

    @property
    def specificity(self) -> int:
        return (self.type != "*") + (self.subtype != "*")


def parse_accept(header: str) -> list[MediaRange]:
    """The media ranges of an Accept header (RFC 9110 12.5.1); malformed elements and parameters other than q
    are skipped, a malformed q counts as 1 (lenient: a typo must not turn an answer into a 406)."""
    ranges: list[MediaRange] = []
    for index, element in enumerate(header.split(",")[:_MAX_RANGES]):
        media, *params = (part.strip() for part in element.split(";"))
        main, slash, sub = media.lower().partition("/")
        if not slash or not main or not sub or (main == "*" and sub != "*"):
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(max(float(value.strip()), 0.0), 1.0)
                except ValueError:
                    q = 1.0
        ranges.append(MediaRange(main, sub, q, index))
    return ranges


def _quality(ranges: list[MediaRange], media_type: str) -> tuple[float, int, int]:
    """(q, specificity, -position) of the most specific range matching media_type; q 0 when none does."""
    best: MediaRange | None = None
    for media_range in ranges:
        if media_range.matches(media_type) and (best is None or media_range.specificity > best.specificity):
            best = media_range
    if best is None:
        return (0.0, 0, 0)
    return (best.q, best.specificity, -best.index)


def choose_answer(accept: str | None, output_format: str | None, *, image_allowed: bool = True) -> str | None:
    """None for the JSON envelope, or the output_format whose bytes the answer carries.

    output_format is the one the request set explicitly (None: not given, so the Accept header may pick it);
    image_allowed is False where the endpoint has no image answer (batches). Raises NotAcceptable (406)."""
    if accept is None or not accept.strip():
        return None
    ranges = parse_accept(accept)
    if not ranges:
        return None
    json_q, json_specificity, _ = _quality(ranges, JSON)
    candidates = [IMAGE_TYPES[output_format]] if output_format else list(IMAGE_TYPES.values())
    best: tuple[tuple[float, int, int], str] | None = None
    if image_allowed:
        for media_type in candidates:
            quality = _quality(ranges, media_type)
            # Matched only through */*: not an opt-in (see the module docstring).
            if quality[0] > 0 and quality[1] > 0 and (best is None or quality[0::2] > best[0][0::2]):
                best = (quality, media_type)
    # An image wins over JSON on a higher q, or on the same q named more precisely ("image/png, */*").
    if best is not None and (best[0][0], best[0][1]) > (json_q, json_specificity):
        return FORMATS[best[1]]
    if json_q > 0:
        return None
    producible = [JSON, *candidates] if image_allowed else [JSON]
    raise NotAcceptable(
        f"this request can answer with {', '.join(producible)}; the Accept header allows none of them"
    )


def choose_image(accept: str | None, output_format: str | None) -> str:
    """The output_format of an answer that is always the cut-out's bytes (the `/image` operations, whose path
    opts in, so `*/*` and no Accept at all get the image too).

    output_format is the one the request set (None: the Accept header picks among the image types, png when it
    names none). Raises NotAcceptable (406) when the Accept header admits no image this request can make."""
    candidates = [IMAGE_TYPES[output_format]] if output_format else list(IMAGE_TYPES.values())
    ranges = parse_accept(accept) if accept and accept.strip() else []
    if not ranges:
        return FORMATS[candidates[0]]
    best: tuple[tuple[float, int, int], str] | None = None
    for media_type in candidates:
        quality = _quality(ranges, media_type)
        if quality[0] > 0 and (best is None or quality > best[0]):
            best = (quality, media_type)
    if best is None:
        raise NotAcceptable(
            f"this request answers with {', '.join(candidates)}; the Accept header allows none of them"
        )
    return FORMATS[best[1]]
