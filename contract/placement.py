"""The text forms of the placement options and the proto messages they stand for: lengths ("30px", "30", "10%"),
the region of interest ("x1 y1 x2 y2"), crop margins (1, 2 or 4 lengths, CSS order), position ("center", "25%",
"25% 75%") and scale ("50%"). The public API, the remove.bg drop-in and the CLI read them here; the inference
service checks the numbers again (inference_service/options.py). A malformed text is a ValueError whose message
says what was expected.
"""

from __future__ import annotations

import re

from removai.v1 import inference_pb2 as pb

_LENGTH = re.compile(r"(\d{1,7}(?:\.\d{1,4})?)(px|%)?")
# Pixels of the original image an option may name; far beyond the largest image the service decodes.
MAX_PX = 1_000_000
MIN_SCALE_PERCENT = 10.0
MAX_SCALE_PERCENT = 100.0


def length(text: str, *, field: str, percent_only: bool = False, max_percent: float = 100.0) -> pb.Length:
    """'30px' or '30' -> 30 pixels; '10%' or '12.5%' -> 10 percent (0..max_percent)."""
    match = _LENGTH.fullmatch(text.strip())
    if match is None or (percent_only and match.group(2) != "%"):
        expected = "a percentage like 50%" if percent_only else "pixels like 30px (or 30) or a percentage like 10%"
        raise ValueError(f"{field}: {text.strip()!r} is not {expected}")
    value, percent = float(match.group(1)), match.group(2) == "%"
    if percent and value > max_percent:
        raise ValueError(f"{field}: {text.strip()} is more than {max_percent:g}%")
    if not percent and value > MAX_PX:
        raise ValueError(f"{field}: {text.strip()} is more than {MAX_PX}px")
    return pb.Length(value=value, percent=percent)


def _parts(text: str, field: str, counts: tuple[int, ...]) -> list[str]:
    parts = text.replace(",", " ").split()
    if len(parts) not in counts:
        wanted = " or ".join(str(count) for count in counts)
        raise ValueError(f"{field}: give {wanted} values separated by spaces, got {len(parts)}")
    return parts


def region(text: str, *, field: str = "roi") -> pb.Region:
    """'x1 y1 x2 y2' (each in px or %, of the image's width for x and height for y) -> Region; x1 < x2, y1 < y2
    when both of a pair have the same unit (mixed units are checked against the image by the service)."""
    x1, y1, x2, y2 = (length(part, field=field) for part in _parts(text, field, (4,)))
    for low, high, axis in ((x1, x2, "x"), (y1, y2, "y")):
        if low.percent == high.percent and low.value >= high.value:
            raise ValueError(f"{field}: {axis}1 must be less than {axis}2 (the rectangle's corners are top-left, "
                             "bottom-right)")
    return pb.Region(x1=x1, y1=y1, x2=x2, y2=y2)


def margins(text: str, *, field: str = "crop_margin", max_px: float, max_percent: float) -> pb.Margins:
    """One value (every side), two (top and bottom, left and right) or four (top, right, bottom, left), each in
    px or % of the subject's size, each capped: max_px pixels, max_percent percent (larger values are capped, not
    refused, as the remove.bg reference does)."""
    values = [length(part, field=field, max_percent=float("inf")) for part in _parts(text, field, (1, 2, 4))]
    capped = [
        pb.Length(value=min(value.value, max_percent if value.percent else max_px), percent=value.percent)
        for value in values
    ]
    if len(capped) == 1:
        top = right = bottom = left = capped[0]
    elif len(capped) == 2:
        top = bottom = capped[0]
        right = left = capped[1]
    else:
        top, right, bottom, left = capped
    return pb.Margins(top=top, right=right, bottom=bottom, left=left)


def position(text: str, *, field: str = "position") -> pb.Placement | None:
    """'original' -> None (the subject stays where it is); 'center' -> 50% 50%; '25%' -> 25% 25%; '25% 75%' ->
    25% of the free room on the left, 75% of it above."""
    cleaned = text.strip().lower()
    if cleaned == "original":
        return None
    if cleaned in ("center", "centre"):
        return pb.Placement(horizontal_percent=50.0, vertical_percent=50.0)
    values = [length(part, field=field, percent_only=True) for part in _parts(cleaned, field, (1, 2))]
    horizontal, vertical = values if len(values) == 2 else (values[0], values[0])
    return pb.Placement(horizontal_percent=horizontal.value, vertical_percent=vertical.value)


def scale(text: str, *, field: str = "scale") -> float:
    """'original' -> 0 (the subject keeps its size); '50%' -> 50 (10..100)."""
    cleaned = text.strip().lower()
    if cleaned == "original":
        return 0.0
    value = length(cleaned, field=field, percent_only=True).value
    if not MIN_SCALE_PERCENT <= value <= MAX_SCALE_PERCENT:
        raise ValueError(f"{field}: must be {MIN_SCALE_PERCENT:g}% to {MAX_SCALE_PERCENT:g}% or original, got {text.strip()}")
    return value


def length_text(value: pb.Length) -> str:
    return f"{value.value:g}%" if value.percent else f"{value.value:g}px"


def region_text(value: pb.Region) -> str:
    """The normal text of a region: 'x1 y1 x2 y2', each with its unit."""
    return " ".join(length_text(getattr(value, name)) for name in ("x1", "y1", "x2", "y2"))


def margins_text(value: pb.Margins) -> str:
    """The normal text of per-side margins: 'top right bottom left', each with its unit."""
    return " ".join(length_text(getattr(value, name)) for name in ("top", "right", "bottom", "left"))


def position_text(value: pb.Placement) -> str:
    return f"{value.horizontal_percent:g}% {value.vertical_percent:g}%"
