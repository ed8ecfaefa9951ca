"""remove.bg's vocabulary in ours: its request parameters as our removal options, its size names as megapixel
caps, and what each result costs in credits (our images: one credit is one image of the plan's monthly quota).

The HTTP shape of the drop-in (bodies, answers, headers, error bodies) is gateway/http/handlers/removebg.py; this
module knows nothing of HTTP. A parameter it cannot honour is refused with a message naming it, never ignored,
except where remove.bg itself documents a parameter as a hint (type, type_level, semitransparency). Our own
extensions (EXTENSIONS) are /v1 options remove.bg does not define, parsed as /v1 parses them.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from contract import placement
from contract.options import BY_NAME, OptionError, RemovalOptions
from gateway.domain import quota
from gateway.domain.images import ImageSource
from gateway.domain.removals import Completed, Removals
from gateway.errors import InvalidRequest, NoForeground
from gateway.store.database import Sessions
from gateway.store.tables import Account

# Every parameter the remove.bg reference defines for POST /v1.0/removebg (the two file parts included).
SOURCES = ("image_file", "image_file_b64", "image_url")
PARAMETERS = frozenset({
    *SOURCES, "size", "type", "type_level", "format", "roi", "crop", "crop_margin", "scale", "position",
    "channels", "add_shadow", "semitransparency", "bg_color", "bg_image_url", "bg_image_file",
})
# Our extensions: /v1 options remove.bg does not define, accepted under their /v1 names with /v1's values
# (contract/options.py). decontaminate: soft edges' colours freed of the old background (default true, as on /v1).
EXTENSIONS = frozenset({"decontaminate"})
ACCEPTED = PARAMETERS | EXTENSIONS
FILE_PARAMETERS = ("image_file", "bg_image_file")

# What X-Type answers: we do not classify subjects (one model for every kind), and say so rather than guess.
SUBJECT_TYPE = "other"
TYPES = frozenset({"auto", "person", "product", "animal", "car", "transportation", "graphic", "other"})
TYPE_LEVELS = frozenset({"none", "1", "2", "latest"})

# remove.bg caps crop margins rather than refusing larger ones: at most 50 % of the subject's size or 500 px.
MAX_MARGIN_PX = 500
MAX_MARGIN_PERCENT = 50.0


@dataclass(frozen=True)
class SizeTier:
    """One `size` value: the most megapixels its result may have, and what it costs in credits."""

    name: str
    max_megapixels: float
    credits: float


_PREVIEW = SizeTier("preview", 0.25, 0.25)
_FULL = SizeTier("full", 25.0, 1.0)
SIZES: Mapping[str, SizeTier] = {
    "preview": _PREVIEW, "small": _PREVIEW, "regular": _PREVIEW,
    "medium": SizeTier("medium", 1.5, 1.0),
    "hd": SizeTier("hd", 4.0, 1.0),
    "full": _FULL, "4k": _FULL,
    "50mp": SizeTier("50MP", 50.0, 1.0),
    # remove.bg: the highest resolution available; here always the full tier (we do not trade size for credits).
    "auto": SizeTier("auto", 25.0, 1.0),
}
DEFAULT_SIZE = "preview"
# remove.bg's PNG results stop at 10 megapixels whatever the size (ZIP, JPG and WebP go to the tier's cap).
MAX_PNG_MEGAPIXELS = 10.0
FORMATS = ("auto", "png", "jpg", "jpeg", "webp", "zip")


def credits_text(credits: float) -> str:
    """X-Credits-Charged as remove.bg writes it: '1', '0.25'."""
    return f"{credits:g}"


def parse_bool(name: str, value: object) -> bool:
    """remove.bg's booleans: true/false, 1/0 (text or JSON)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise InvalidRequest(f"{name}: must be true or false (or 1 or 0), got {str(value)[:40]!r}")


def _text(name: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidRequest(f"{name}: must be a string")
    return str(value).strip()


def _placement(name: str, parse: Any, value: str, **limits: Any) -> Any:
    try:
        return parse(value, field=name, **limits)
    except ValueError as error:
        raise InvalidRequest(str(error)) from error


@dataclass(frozen=True)
class DropInRequest:
    """A remove.bg request in our terms: the source (exactly one of url, the decoded base64 bytes, or an uploaded
    file the handler holds), our option values by public name, and the billing."""

    options: dict[str, Any]
    size: SizeTier
    image_url: str | None = None
    image_bytes: bytes | None = field(default=None, repr=False)
    uploaded: bool = False
    bg_uploaded: bool = False

    @property
    def credits(self) -> float:
        return self.size.credits


def translate(
    values: Mapping[str, object], *, files: frozenset[str], max_upload_bytes: int
) -> DropInRequest:
    """The remove.bg parameters `values` (text fields or JSON members) and the names of the file parts sent
    (`files`) -> a DropInRequest; InvalidRequest naming the parameter for anything remove.bg's reference does
    not allow or we cannot do."""
    unknown = sorted(set(values) - ACCEPTED)
    if unknown:
        raise InvalidRequest(f"{unknown[0]}: is not a remove.bg parameter")
    for name in FILE_PARAMETERS:
        if name in values:
            raise InvalidRequest(f"{name}: send it as a file part of a multipart/form-data body")
    given = [name for name in SOURCES if name in files or values.get(name) not in (None, "")]
    if len(given) != 1:
        raise InvalidRequest(
            "image_file, image_file_b64, image_url: give exactly one image source"
            + (f" (got {', '.join(given)})" if given else "")
        )
    options: dict[str, Any] = {}
    image_url = image_bytes = None
    if given[0] == "image_url":
        image_url = _text("image_url", values["image_url"])
    elif given[0] == "image_file_b64":
        image_bytes = _decode_b64(_text("image_file_b64", values["image_file_b64"]), max_upload_bytes)

    size_name = _text("size", values.get("size", DEFAULT_SIZE)).lower() or DEFAULT_SIZE
    size = SIZES.get(size_name)
    if size is None:
        raise InvalidRequest(f"size: must be one of {', '.join(sorted(SIZES))}, got {size_name!r}")
    subject_type = _text("type", values.get("type", "auto")).lower() or "auto"
    if subject_type not in TYPES:
        raise InvalidRequest(f"type: must be one of {', '.join(sorted(TYPES))}")
    type_level = _text("type_level", values.get("type_level", "1")).lower() or "1"
    if type_level not in TYPE_LEVELS:
        raise InvalidRequest(f"type_level: must be one of {', '.join(sorted(TYPE_LEVELS))}")
    if "semitransparency" in values:
        parse_bool("semitransparency", values["semitransparency"])  # a hint: checked, then nothing to do

    bg_color = _text("bg_color", values["bg_color"]) if values.get("bg_color") not in (None, "") else None
    bg_image_url = _text("bg_image_url", values["bg_image_url"]) if values.get("bg_image_url") not in (None, "") else None
    backgrounds = [name for name, given_bg in (("bg_color", bg_color), ("bg_image_url", bg_image_url),
                                               ("bg_image_file", "bg_image_file" in files)) if given_bg]
    if len(backgrounds) > 1:
        raise InvalidRequest(f"{backgrounds[1]}: give only one of bg_color, bg_image_url and bg_image_file")
    if bg_color is not None:
        if len(bg_color.removeprefix("#")) in (4, 8):
            raise InvalidRequest("bg_color: a colour with an alpha channel (4 or 8 hex digits) is not supported; "
                                 "give 3 or 6 hex digits or a colour name")
        options["bg_color"] = bg_color
    if bg_image_url is not None:
        options["bg_image_url"] = bg_image_url

    channels = _text("channels", values.get("channels", "rgba")).lower() or "rgba"
    if channels not in ("rgba", "alpha"):
        raise InvalidRequest("channels: must be rgba or alpha")
    output_format = _text("format", values.get("format", "auto")).lower() or "auto"
    if output_format not in FORMATS:
        raise InvalidRequest(f"format: must be one of {', '.join(FORMATS)}")
    if channels == "alpha":
        if output_format not in ("auto", "png"):
            raise InvalidRequest("channels: the alpha matte is a grayscale PNG; use format png or auto")
        if backgrounds:
            raise InvalidRequest("channels: the alpha matte has no background; leave bg_color and bg_image_* out")
        options["output_type"] = "mask"
        output_format = "png"
    if output_format == "auto":
        # PNG when the result has transparency, else JPG: only a background makes it opaque.
        output_format = "jpg" if backgrounds else "png"
    if output_format == "zip" and backgrounds:
        raise InvalidRequest("format: a zip holds the cut-out's colours and its matte; leave the background out")
    options["output_format"] = output_format
    megapixels = min(size.max_megapixels, MAX_PNG_MEGAPIXELS) if output_format == "png" else size.max_megapixels
    options["max_megapixels"] = megapixels

    if "roi" in values and values["roi"] not in (None, ""):
        options["roi"] = placement.region_text(_placement("roi", placement.region, _text("roi", values["roi"])))
    crop = parse_bool("crop", values["crop"]) if "crop" in values else False
    if crop:
        options["crop"] = True
    if values.get("crop_margin") not in (None, ""):
        margin = _text("crop_margin", values["crop_margin"])
        margins = _placement("crop_margin", placement.margins, margin, max_px=MAX_MARGIN_PX,
                             max_percent=MAX_MARGIN_PERCENT)
        if crop:  # remove.bg: crop_margin only has an effect with crop=true
            options["crop_margin"] = placement.margins_text(margins)
    if values.get("scale") not in (None, ""):
        scale = _placement("scale", placement.scale, _text("scale", values["scale"]))
        if scale:
            options["scale"] = f"{scale:g}%"
    if values.get("position") not in (None, ""):
        position = _placement("position", placement.position, _text("position", values["position"]))
        if position is not None:
            options["position"] = placement.position_text(position)
    if "add_shadow" in values and parse_bool("add_shadow", values["add_shadow"]):
        if options.get("output_type") == "mask":
            raise InvalidRequest("add_shadow: the alpha matte has no shadow; leave add_shadow out with channels=alpha")
        options["add_shadow"] = True
    if values.get("decontaminate") not in (None, ""):
        options["decontaminate"] = _option("decontaminate", values["decontaminate"])
    return DropInRequest(
        options=options, size=size, image_url=image_url, image_bytes=image_bytes,
        uploaded=given[0] == "image_file", bg_uploaded="bg_image_file" in files,
    )


def _option(name: str, value: object) -> Any:
    """An extension's value as /v1 takes it: text through the contract's parser; a JSON boolean as it is (a
    JSON 0 or 1 too, as remove.bg's own booleans); anything else refused, naming the parameter."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if not isinstance(value, str):
        raise InvalidRequest(f"{name}: must be true or false")
    try:
        return BY_NAME[name].parse(value)
    except OptionError as error:
        raise InvalidRequest(str(error)) from error


def _decode_b64(text: str, max_bytes: int) -> bytes:
    """image_file_b64: standard base64 (a data: URL prefix is taken off), at most max_bytes once decoded."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    if math.ceil(len(text) * 3 / 4) > max_bytes + 3:
        raise InvalidRequest(f"image_file_b64: the image is larger than {max_bytes // (1024 * 1024)} MB")
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("image_file_b64: not valid base64") from None
    if not data:
        raise InvalidRequest("image_file_b64: the image is empty")
    return data


async def cut_out(
    removals: Removals,
    sessions: Sessions,
    account: Account,
    drop_in: DropInRequest,
    source: ImageSource,
    *,
    data: bytes | None,
    background: bytes | None,
    request_id: str,
) -> Completed:
    """The one engine's single-image use-case with remove.bg's billing on top: a result without foreground is
    remove.bg's 400 unknown_foreground (its image deleted, its credit given back: nothing is billed), and a
    preview is settled at a quarter of an image once it has completed."""
    try:
        options = RemovalOptions.from_fields(drop_in.options, bg_image=drop_in.bg_uploaded)
    except OptionError as error:
        raise InvalidRequest(str(error)) from error
    completed = await removals.submit_single(
        account, source, options, data=data, background=background, request_id=request_id
    )
    if completed.image.foreground is None:
        if await removals.delete_image(account.id, completed.image.id) is not None:
            await quota.release_images(sessions, account.id, 1)
        raise NoForeground("no pixel of the result is foreground: there is no subject to cut out")
    if drop_in.credits < 1:
        await quota.settle_as_quarter(sessions, account.id)
    return completed
