"""Removal options, defined once: each option's public name, values, limits, pattern, text parser, description
and CLI flag, and the rules on how options combine.

Every side derives from this module: the gateway's request schemas and OpenAPI document (gateway/schemas.py),
the gRPC message the gateway sends and the options it stores with each image (RemovalOptions.message and
fields, used by gateway/net/inference.py and the gateway's image records), the inference service's validation of that message
(RemovalOptions.from_message, used by inference_service/options.py) and the CLI's flags (removai_cli/, one flag
per OPTIONS entry that names one). tests/test_options_agree.py sends the same values through all four and
checks they accept, refuse and forward alike.

How to add an option `foo` (docs/options.md says the same):
1. protos/removai/v1/inference.proto: its field in RemovalOptions (`make stubs` writes the stubs).
2. Here, and only here for its meaning: `FOO = Option("foo", ...)` appended to OPTIONS (description for the
   OpenAPI document, pattern, examples, the CLI flag and its help); a field `foo` of RemovalOptions with its
   default; its text parser in `_PARSERS` when the text needs more than the type (limits, normalising); its
   line in `message()` and `from_message()`; and any combination rule it joins in `check()` (an OptionError
   naming the public option).
3. inference_service/options.py: its line in RemovalOptions.from_proto (the pipeline's view), and its effect.
4. gateway/schemas.py RemovalParams: one line, `foo: T = option_field(FOO, default)` (the agreement test names
   any option missing there).
5. tests/test_options_agree.py: accepted and refused values in ACCEPTED / REFUSED.
Nothing else changes: the CLI adds the flag from the spec, the gateway stores (Image.options, by public name,
unless the option is one of gateway.domain.images.STORED_IN_COLUMNS) and forwards RemovalOptions as a whole,
and the OpenAPI text is the description here.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from PIL import ImageColor

from contract import placement
from removai.v1 import inference_pb2 as pb


class OptionError(ValueError):
    """An option's value, or a combination of options, the contract refuses; `option` is its public name.
    Each side turns it into its own error: a 400 invalid_request, INVALID_ARGUMENT, a CLI usage error."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option
        self.message = message


# --- Enumerated options --------------------------------------------------------------------------------------


class OutputFormat(enum.StrEnum):
    """The cut-out's encoding; the proto's UNSPECIFIED means PNG. `jpeg` is accepted as `jpg` (ALIASES)."""

    PNG = "png"
    JPG = "jpg"
    WEBP = "webp"
    ZIP = "zip"  # color.jpg and the alpha matte alpha.png, in one archive

    @classmethod
    def _missing_(cls, value: object) -> OutputFormat | None:
        return _FORMAT_ALIASES.get(value) if isinstance(value, str) else None

    @classmethod
    def accepted(cls) -> list[str]:
        """Every name a request may give: the members' values, then the aliases."""
        return [member.value for member in cls] + list(_FORMAT_ALIASES)

    @property
    def proto(self) -> pb.OutputFormat.ValueType:
        return pb.OutputFormat.Value(f"OUTPUT_FORMAT_{self.name}")

    @classmethod
    def from_proto(cls, value: int) -> OutputFormat:
        """The member for a proto value (UNSPECIFIED -> PNG); ValueError for a value the proto lacks."""
        if value == pb.OUTPUT_FORMAT_UNSPECIFIED:
            return cls.PNG
        name = pb.OutputFormat.Name(pb.OutputFormat.ValueType(value)).removeprefix("OUTPUT_FORMAT_")
        return cls[name]

    @property
    def content_type(self) -> str:
        return _CONTENT_TYPES[self]

    @property
    def extension(self) -> str:
        """The file name extension of stored and downloaded cut-outs."""
        return self.value

    @property
    def has_alpha(self) -> bool:
        return self is not OutputFormat.JPG


# Other names for a format, as people write them (the media type is image/jpeg); answers always say the value.
_FORMAT_ALIASES = {"jpeg": OutputFormat.JPG}
_CONTENT_TYPES = {
    OutputFormat.PNG: "image/png", OutputFormat.JPG: "image/jpeg", OutputFormat.WEBP: "image/webp",
    OutputFormat.ZIP: "application/zip",
}


class OutputSize(enum.StrEnum):
    """Target for the longer side of the result; the result is never upscaled. UNSPECIFIED means ORIGINAL."""

    ORIGINAL = "original"
    SMALL = "small"
    MEDIUM = "medium"
    LARGE = "large"

    @property
    def proto(self) -> pb.OutputSize.ValueType:
        return pb.OutputSize.Value(f"OUTPUT_SIZE_{self.name}")

    @classmethod
    def from_proto(cls, value: int) -> OutputSize:
        """The member for a proto value (UNSPECIFIED -> ORIGINAL); ValueError for a value the proto lacks."""
        if value == pb.OUTPUT_SIZE_UNSPECIFIED:
            return cls.ORIGINAL
        name = pb.OutputSize.Name(pb.OutputSize.ValueType(value)).removeprefix("OUTPUT_SIZE_")
        return cls[name]

    @property
    def longer_side(self) -> int | None:
        return _LONGER_SIDES[self]

    def fit(self, width: int, height: int) -> tuple[int, int]:
        """The output dimensions for an image of width x height, keeping its aspect ratio."""
        target = self.longer_side
        longer = max(width, height)
        if target is None or longer <= target:
            return width, height
        scale = target / longer
        return max(1, round(width * scale)), max(1, round(height * scale))


# The proto comments name the same figures (protos/removai/v1/inference.proto).
_LONGER_SIDES = {OutputSize.ORIGINAL: None, OutputSize.SMALL: 1080, OutputSize.MEDIUM: 1920, OutputSize.LARGE: 2880}


class OutputType(enum.StrEnum):
    """The cut-out, or only its alpha matte (a single-channel PNG); the proto's UNSPECIFIED means CUTOUT."""

    CUTOUT = "cutout"
    MASK = "mask"

    @property
    def proto(self) -> pb.OutputType.ValueType:
        return pb.OutputType.Value(f"OUTPUT_TYPE_{self.name}")

    @classmethod
    def from_proto(cls, value: int) -> OutputType:
        """The member for a proto value (UNSPECIFIED -> CUTOUT); ValueError for a value the proto lacks."""
        if value == pb.OUTPUT_TYPE_UNSPECIFIED:
            return cls.CUTOUT
        name = pb.OutputType.Name(pb.OutputType.ValueType(value)).removeprefix("OUTPUT_TYPE_")
        return cls[name]


# --- Limits, patterns and parsers -----------------------------------------------------------------------------

# A pixel of the cut-out is foreground when its alpha is above this (of 255): what crop keeps and what an
# answer's `foreground` box bounds. inference_service/compositing.py uses the same figure (a test holds them equal).
FOREGROUND_ALPHA_THRESHOLD = 16

MAX_CROP_MARGIN_PX = 2000
MAX_CROP_MARGIN_PERCENT = 100.0
# Pixels ('30', '30px'; four digits reach the limit) or a percentage with up to two decimals ('10%', '12.5%');
# one value for every side, two (top and bottom, left and right) or four (top, right, bottom, left).
_MARGIN = r"(\d{1,4}(px)?|\d{1,3}(\.\d{1,2})?%)"
CROP_MARGIN_PATTERN = rf"^{_MARGIN}( {_MARGIN}( {_MARGIN} {_MARGIN})?)?$"
_LENGTH = r"\d{1,7}(\.\d{1,4})?(px|%)?"
ROI_PATTERN = rf"^{_LENGTH} {_LENGTH} {_LENGTH} {_LENGTH}$"
SCALE_PATTERN = r"^(original|\d{1,3}(\.\d{1,2})?%)$"
POSITION_PATTERN = r"^(original|center|\d{1,3}(\.\d{1,2})?%( \d{1,3}(\.\d{1,2})?%)?)$"
MAX_MEGAPIXELS = 10_000.0
MODEL_PATTERN = r"^[A-Za-z0-9_.-]{1,128}$"
# 3 or 6 hex digits with or without '#', or a CSS colour name (checked against CSS_COLOR_NAMES).
BG_COLOR_PATTERN = r"^(#?[0-9A-Fa-f]{3}|#?[0-9A-Fa-f]{6}|[A-Za-z]{3,20})$"
# The CSS Color Module's named colours, lower-case, as '#rrggbb' (Pillow keeps the W3C table).
CSS_COLOR_NAMES: Mapping[str, str] = {name: value for name, value in ImageColor.colormap.items() if isinstance(value, str)}

_CROP_MARGIN = re.compile(CROP_MARGIN_PATTERN)
_MODEL = re.compile(MODEL_PATTERN)
_HEX = re.compile(r"#?([0-9A-Fa-f]{3}|[0-9A-Fa-f]{6})")
BG_COLOR_FORMS = "a hex colour like #FF0000, FF0000 or #F00, or a CSS colour name like red"


def parse_color(text: str) -> str:
    """A colour as people write it -> '#RRGGBB' (upper-case): 'fff', '#FFF', 'ffffff', '#FFFFFF', 'white'.
    OptionError('bg_color', ...) for anything else. The one colour parser of every API (the HTTP API's
    bg_color, the gRPC message's, the CLI's --bg-color and any compatible API that takes a colour)."""
    value = text.strip()
    match = _HEX.fullmatch(value)
    if match is not None:
        digits = match.group(1)
        if len(digits) == 3:
            digits = "".join(digit * 2 for digit in digits)
        return "#" + digits.upper()
    named = CSS_COLOR_NAMES.get(value.lower())
    if named is not None and _HEX.fullmatch(named):
        return named.upper()
    raise OptionError("bg_color", f"must be {BG_COLOR_FORMS}")


def rgb_of(color: str) -> tuple[int, int, int]:
    """(r, g, b) of a colour in any form parse_color accepts."""
    value = int(parse_color(color)[1:], 16)
    return (value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF


@dataclass(frozen=True)
class CropMargin:
    """Added on each side of the foreground's box: pixels of the original, or percent of the box's width
    (left, right) and height (top, bottom). `text` is the margin as it was given, echoed in answers."""

    px: int = 0
    percent: float = 0.0
    text: str = field(default="", compare=False)
    # Per-side margins (two or four values given): 'top right bottom left', each with its unit; px and percent
    # are 0 then.
    sides: str = ""

    @classmethod
    def parse(cls, text: str) -> CropMargin:
        """'30', '30px' -> 30 px; '10%', '12.5%' -> 10 or 12.5 percent; '10px 5%' or '1 2 3 4' per side (CSS
        order); OptionError for anything else."""
        if _CROP_MARGIN.fullmatch(text) is None:
            raise OptionError(
                "crop_margin", "must be pixels like 30 or 30px, or a percentage like 10%: one value, two (top and "
                "bottom, left and right) or four (top right bottom left)"
            )
        if " " in text:
            margins = placement.margins(
                text, field="crop_margin", max_px=float("inf"), max_percent=float("inf")
            )
            margin = cls(text=text, sides=placement.margins_text(margins))
            margin.check()
            return margin
        if text.endswith("%"):
            margin = cls(percent=float(text[:-1]), text=text)
        else:
            margin = cls(px=int(text.removesuffix("px")), text=text)
        margin.check()
        return margin

    def margins(self) -> pb.Margins | None:
        """The per-side margins as the message carries them; None for one value on every side."""
        if not self.sides:
            return None
        return placement.margins(self.sides, field="crop_margin", max_px=float("inf"), max_percent=float("inf"))

    def check(self) -> None:
        margins = self.margins()
        if margins is not None:
            for side in (margins.top, margins.right, margins.bottom, margins.left):
                limit = MAX_CROP_MARGIN_PERCENT if side.percent else MAX_CROP_MARGIN_PX
                if not 0.0 <= side.value <= limit:
                    raise OptionError(
                        "crop_margin", f"at most {MAX_CROP_MARGIN_PX}px or {MAX_CROP_MARGIN_PERCENT:g}% on each side"
                    )
            return
        if self.px and self.percent:
            raise OptionError("crop_margin", "give pixels or a percentage, not both")
        if not 0 <= self.px <= MAX_CROP_MARGIN_PX or not 0.0 <= self.percent <= MAX_CROP_MARGIN_PERCENT:
            # (NaN fails the second test too.)
            raise OptionError("crop_margin", f"at most {MAX_CROP_MARGIN_PX}px or {MAX_CROP_MARGIN_PERCENT:g}%")

    def __str__(self) -> str:
        if self.text:
            return self.text
        if self.sides:
            return self.sides
        return f"{self.percent:g}%" if self.percent else f"{self.px}px"

    def __bool__(self) -> bool:
        return bool(self.px or self.percent or self.sides)


def _placement_parser(name: str, parse: Callable[..., Any], to_text: Callable[[Any], str]) -> Callable[[str], Any]:
    """A placement option's parser: its text in normal form (None for 'original'), OptionError naming it."""

    def parsed(text: str) -> Any:
        try:
            value = parse(text.strip(), field=name)
        except ValueError as error:
            raise OptionError(name, str(error).removeprefix(f"{name}: ")) from None
        return None if value is None else to_text(value)

    return parsed


def _scale_or_none(text: str, *, field: str) -> float | None:
    """The scale in percent; None for 'original' (the default: the subject keeps its size)."""
    return placement.scale(text, field=field) or None


def _scale_text(value: float) -> str:
    return f"{value:g}%"


def parse_megapixels(text: str | float) -> float:
    """'0.25', '4' -> the cap in megapixels (0 < value <= MAX_MEGAPIXELS)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise OptionError("max_megapixels", "must be a number of megapixels like 0.25 or 4") from None
    if not 0.0 < value <= MAX_MEGAPIXELS:  # NaN fails this too
        raise OptionError("max_megapixels", f"must be more than 0 and at most {MAX_MEGAPIXELS:g}")
    return value


def check_model_name(text: str) -> str:
    if _MODEL.fullmatch(text) is None:
        raise OptionError("model", "must be 1 to 128 letters, digits, '_', '.' or '-' (a name from GET /v1/models)")
    return text


def _enum_parser(kind: type[enum.StrEnum]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            names = OutputFormat.accepted() if kind is OutputFormat else [member.value for member in kind]
            raise OptionError(_ENUM_OPTIONS[kind], f"must be one of {', '.join(names)}") from None

    return parse


def _bool_parser(name: str) -> Callable[[str], bool]:
    def parse(text: str) -> bool:
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off", ""):
            return False
        raise OptionError(name, "must be true or false")

    return parse


# --- The options ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CliFlag:
    """How the CLI offers an option: a flag taking a value (the option's parser checks it), or a switch that
    sets `switch` when given."""

    flag: str
    help: str
    metavar: str | None = None
    switch: object = None


@dataclass(frozen=True)
class Option:
    """One public option: what the OpenAPI document says of it and how the CLI offers it (None: the CLI has
    its own way, e.g. --bg-image takes a file or a URL)."""

    name: str
    description: str
    examples: tuple[str, ...] = ()
    pattern: str | None = None
    max_length: int | None = None
    cli: CliFlag | None = None

    def parse(self, text: str) -> Any:
        """The option's value from its text form; OptionError naming the option when it is not one."""
        return _PARSERS.get(self.name, str)(text)


OUTPUT_FORMAT = Option(
    "output_format",
    "Format of the cut-out. png and webp keep transparency; jpg has none. `jpeg` is accepted as jpg (answers "
    "say jpg).",
    cli=CliFlag("--format", "output format (jpeg is taken as jpg; default: png)", metavar="png|jpg|webp"),
)
OUTPUT_SIZE = Option(
    "output_size",
    "original keeps the size; small, medium and large fit the longer side in 1080, 1920 and 2880 px, keeping "
    "the aspect ratio and never upscaling.",
    cli=CliFlag("--size", "longer side: small 1080, medium 1920, large 2880 px; never upscaled (default: "
                "original)", metavar="original|small|medium|large"),
)
BG_COLOR = Option(
    "bg_color",
    "Colour composited behind the subject (the result is then opaque in every format): hex with or without "
    "`#`, 6 or 3 digits (`#FF0000`, `ff0000`, `#f00`, `f00`), or a CSS colour name (`red`, `white`, "
    "`cornflowerblue`). Answers give it as `#RRGGBB`. Without it, jpg gets white and png/webp stay transparent.",
    examples=("#FF0000", "ff0000", "#f00", "red"),
    pattern=BG_COLOR_PATTERN,
    cli=CliFlag("--bg-color", "background colour: #RRGGBB, RRGGBB, #RGB or a CSS name (jpg: white unless given; "
                "png/webp: transparent unless given)", metavar="COLOUR"),
)
OUTPUT_TYPE = Option(
    "output_type",
    "cutout: the image without its background. mask: only the alpha matte, a single-channel (grayscale) PNG "
    "equal pixel for pixel to the cut-out's alpha; output_format must then be png and no background may be "
    "given.",
    cli=CliFlag("--mask", "write only the alpha matte, a grayscale PNG equal to the cut-out's alpha",
                switch=OutputType.MASK),
)
CROP = Option(
    "crop",
    f"Crop the result to the foreground's bounding box (pixels with alpha above {FOREGROUND_ALPHA_THRESHOLD} of "
    "255) plus crop_margin; output_size applies after the crop. An image without foreground is a 422.",
    cli=CliFlag("--crop", "crop to the subject's bounding box", switch=True),
)
CROP_MARGIN = Option(
    "crop_margin",
    f"Only with crop: added on each side of the box, clamped to the image. Pixels of the original ('30' or "
    f"'30px', at most {MAX_CROP_MARGIN_PX}) or percent of the box's width (left, right) and height (top, "
    f"bottom), '10%' (at most {MAX_CROP_MARGIN_PERCENT:g}). A JSON number is pixels.",
    examples=("30px", "10%"),
    pattern=CROP_MARGIN_PATTERN,
    cli=CliFlag("--crop-margin", "with --crop: margin on each side, pixels or percent of the box (clamped to the "
                "image)", metavar="30px|10%"),
)
MODEL = Option(
    "model",
    "A model listed by GET /v1/models; without it the default one. An unknown model is a 400 naming the "
    "available ones.",
    examples=("isnet_int8",),
    pattern=MODEL_PATTERN,
    cli=CliFlag("--model", "a model from GET /v1/models (default: the service's)", metavar="NAME"),
)
BG_IMAGE_URL = Option(
    "bg_image_url",
    "A public http(s) image (JPG, PNG or WEBP, fetched like url) scaled to cover the result, centred, and "
    "composited under the subject: the result is opaque. Not with bg_color or a bg_image file.",
    examples=("https://example.com/beach.jpg",),
    max_length=2048,
)
DECONTAMINATE = Option(
    "decontaminate",
    "Estimate the foreground colour of semi-transparent edge pixels (hair, fur, motion blur, glass) so the old "
    "background's colour does not fringe the subject on a new background (blur-fusion foreground estimation). "
    "Alpha is unchanged; opaque pixels keep their colours. Applies to cut-outs, transparent or over bg_color "
    "or a background image. Default true; false keeps the photo's own colours everywhere.",
    cli=CliFlag("--no-decontaminate", "keep the photo's own colours on soft edges (default: the old background's "
                "colour is removed from them)", switch=False),
)

ROI = Option(
    "roi",
    "Region of interest: only this rectangle of the image can be foreground; everything outside it is background. "
    "'x1 y1 x2 y2', the top-left and bottom-right corners, each in px ('30px' or '30') or percent of the image's "
    "width (x) or height (y).",
    examples=("0% 0% 50% 100%", "10px 20px 300px 400px"),
    pattern=ROI_PATTERN,
    cli=CliFlag("--roi", "only this rectangle can be foreground: 'x1 y1 x2 y2' in px or %", metavar="'X1 Y1 X2 Y2'"),
)
SCALE = Option(
    "scale",
    "The subject scaled (up or down, aspect kept) to this percent of the canvas (the result, after crop) in its "
    "tighter dimension, '10%' to '100%'; 'original' (the default) keeps its size. Implies position center unless "
    "position is given.",
    examples=("80%",),
    pattern=SCALE_PATTERN,
    cli=CliFlag("--scale", "the subject at this percent of the canvas (10%..100%)", metavar="PERCENT"),
)
POSITION = Option(
    "position",
    "Where the subject goes on the canvas: 'original' (where it was; the default without scale), 'center' (the "
    "default with scale), or percentages of the free room left of and above it: '50%' for both, '0% 100%' for the "
    "bottom-left corner.",
    examples=("center", "50% 100%"),
    pattern=POSITION_PATTERN,
    cli=CliFlag("--position", "original, center, or 'H% V%' of the free room", metavar="POSITION"),
)
ADD_SHADOW = Option(
    "add_shadow",
    "A soft shadow under the subject, computed from its matte (shifted down by 3 % of the subject's height, "
    "blurred, half-opaque black); over a transparent background it is partly transparent pixels. No light model.",
    cli=CliFlag("--shadow", "add a soft shadow computed from the matte", switch=True),
)
MAX_MEGAPIXELS_OPTION = Option(
    "max_megapixels",
    "At most this many megapixels in the result (aspect kept, never upscaled), besides output_size: 0.25 for a "
    "preview, 1.5, 4, 25...",
    examples=("0.25", "4"),
    cli=CliFlag("--max-megapixels", "at most this many megapixels in the result", metavar="MP"),
)

OPTIONS: tuple[Option, ...] = (
    OUTPUT_FORMAT, OUTPUT_SIZE, BG_COLOR, OUTPUT_TYPE, CROP, CROP_MARGIN, MODEL, BG_IMAGE_URL, ROI, SCALE, POSITION,
    ADD_SHADOW, MAX_MEGAPIXELS_OPTION, DECONTAMINATE,
)
BY_NAME: Mapping[str, Option] = {option.name: option for option in OPTIONS}

_ENUM_OPTIONS: dict[type[enum.StrEnum], str] = {
    OutputFormat: "output_format", OutputSize: "output_size", OutputType: "output_type",
}
_PARSERS: dict[str, Callable[[str], Any]] = {
    "output_format": _enum_parser(OutputFormat),
    "output_size": _enum_parser(OutputSize),
    "output_type": _enum_parser(OutputType),
    "bg_color": parse_color,
    "crop": _bool_parser("crop"),
    "decontaminate": _bool_parser("decontaminate"),
    "crop_margin": CropMargin.parse,
    "model": check_model_name,
    "roi": _placement_parser("roi", placement.region, placement.region_text),
    "scale": _placement_parser("scale", _scale_or_none, _scale_text),
    "position": _placement_parser("position", placement.position, placement.position_text),
    "add_shadow": _bool_parser("add_shadow"),
    "max_megapixels": parse_megapixels,
}


@dataclass(frozen=True)
class RemovalOptions:
    """Every option's value, parsed: what the gateway stores and forwards, the CLI sends and the inference
    service runs. Built by `from_fields` (public names and their text or JSON values) or `from_message` (the
    gRPC message), each of which checks values and combinations."""

    output_format: OutputFormat = OutputFormat.PNG
    output_size: OutputSize = OutputSize.ORIGINAL
    bg_color: str | None = None  # '#RRGGBB' (parse_color's form)
    output_type: OutputType = OutputType.CUTOUT
    crop: bool = False
    crop_margin: CropMargin | None = None
    model: str | None = None  # None: the service's default model
    bg_image_url: str | None = None  # fetched by the gateway; the message carries its bytes
    roi: str | None = None  # 'x1 y1 x2 y2' in normal form (placement.region_text)
    scale: str | None = None  # '50%'; None or 'original': the subject keeps its size
    position: str | None = None  # '50% 100%' (placement.position_text); None: where it was (centred with scale)
    add_shadow: bool = False
    max_megapixels: float | None = None
    decontaminate: bool = True  # soft edges' colours freed of the old background

    def check(self, *, bg_image: bool = False) -> None:
        """The combination rules: options that contradict each other are an OptionError, never silently
        ignored. `bg_image`: a background image's bytes come with the request (a file part, the message's
        bg_image_bytes)."""
        if self.crop_margin is not None and not self.crop:
            raise OptionError("crop_margin", "applies only with crop=true")
        if self.crop_margin is not None:
            self.crop_margin.check()
        if self.bg_image_url and bg_image:
            raise OptionError("bg_image_url", "give bg_image_url or a bg_image file, not both")
        background = bool(self.bg_image_url) or bg_image
        if self.output_type is OutputType.MASK:
            if self.output_format is not OutputFormat.PNG:
                raise OptionError("output_format", "a mask is a single-channel PNG; use png (the default)")
            if self.bg_color or background:
                raise OptionError("output_type", "a mask has no background; give neither bg_color nor a background image")
        if self.bg_color and background:
            raise OptionError("bg_color", "give bg_color or a background image (bg_image_url, bg_image), not both")
        if self.output_format is OutputFormat.ZIP and (self.bg_color or background):
            raise OptionError("output_format", "a zip holds the cut-out's colours and its matte; leave the background out")
        if self.output_type is OutputType.MASK and self.add_shadow:
            raise OptionError("add_shadow", "a mask has no shadow; leave add_shadow out")
        if self.max_megapixels is not None:
            parse_megapixels(self.max_megapixels)

    @classmethod
    def from_fields(cls, values: Mapping[str, object], *, bg_image: bool = False) -> RemovalOptions:
        """From public names and their values as text (a form, a flag, a stored row) or already parsed (JSON
        booleans and numbers, enum members); names this module does not define are ignored; checked."""
        parsed: dict[str, Any] = {}
        for name, value in values.items():
            option = BY_NAME.get(name)
            if option is None or value is None:
                continue
            if isinstance(value, int) and not isinstance(value, bool) and name == "crop_margin":
                value = str(value)
            parsed[name] = option.parse(value) if isinstance(value, str) else value
        options = cls(**parsed)
        options.check(bg_image=bg_image)
        return options

    def fields(self) -> dict[str, str | bool]:
        """The options that differ from their defaults, by public name, as JSON values (crop a boolean, the
        others text): what the gateway stores with an image and echoes, and the CLI sends."""
        defaults = RemovalOptions()
        out: dict[str, str | bool] = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value == getattr(defaults, spec.name) or value is None:
                continue
            out[spec.name] = value if isinstance(value, bool) else str(value)
        return out

    def message(self, request_id: str = "") -> pb.RemovalOptions:
        """The gRPC message. bg_image_url is not in it: the caller fetches that image and sends its bytes
        (contract.client.remove_background sets bg_image_bytes when it does)."""
        margin = self.crop_margin or CropMargin()
        return pb.RemovalOptions(
            output_format=self.output_format.proto,
            output_size=self.output_size.proto,
            bg_color=self.bg_color or "",
            request_id=request_id,
            output_type=self.output_type.proto,
            crop=self.crop,
            crop_margin_px=margin.px,
            crop_margin_percent=margin.percent,
            model=self.model or "",
            roi=placement.region(self.roi) if self.roi else None,
            crop_margins=margin.margins(),
            scale_percent=placement.scale(self.scale) if self.scale else 0.0,
            position=placement.position(self.position) if self.position else None,
            add_shadow=self.add_shadow,
            max_megapixels=self.max_megapixels or 0.0,
            decontaminate=self.decontaminate,
        )

    @classmethod
    def from_message(cls, message: pb.RemovalOptions) -> RemovalOptions:
        """From the gRPC message, every value and combination checked (OptionError); its background image is
        message.bg_image_bytes long."""
        try:
            output_format = OutputFormat.from_proto(message.output_format)
        except (ValueError, KeyError):
            raise OptionError("output_format", f"unknown value {message.output_format}") from None
        try:
            output_size = OutputSize.from_proto(message.output_size)
        except (ValueError, KeyError):
            raise OptionError("output_size", f"unknown value {message.output_size}") from None
        try:
            output_type = OutputType.from_proto(message.output_type)
        except (ValueError, KeyError):
            raise OptionError("output_type", f"unknown value {message.output_type}") from None
        margin = CropMargin(message.crop_margin_px, message.crop_margin_percent)
        if message.HasField("crop_margins"):
            if margin:
                raise OptionError("crop_margin", "one value (crop_margin_px, crop_margin_percent) or per side, not both")
            margin = CropMargin(sides=placement.margins_text(message.crop_margins))
        options = cls(
            output_format=output_format,
            output_size=output_size,
            bg_color=parse_color(message.bg_color) if message.bg_color else None,
            output_type=output_type,
            crop=message.crop,
            crop_margin=margin if margin else None,  # NaN is truthy, and refused by check()
            model=check_model_name(message.model) if message.model else None,
            roi=_checked("roi", placement.region, placement.region_text(message.roi)) if message.HasField("roi") else None,
            scale=_scale_of(message.scale_percent),
            position=(
                _checked("position", placement.position, placement.position_text(message.position))
                if message.HasField("position") else None
            ),
            add_shadow=message.add_shadow,
            max_megapixels=message.max_megapixels or None,
            # Unset (a caller that predates the field) is the default.
            decontaminate=message.decontaminate if message.HasField("decontaminate") else True,
        )
        options.check(bg_image=message.bg_image_bytes > 0)
        return options


def _checked(name: str, parse: Callable[..., Any], text: str) -> str:
    """A placement value from the message, checked by its text parser (the message's numbers are anyone's)."""
    try:
        parse(text, field=name)
    except ValueError as error:
        raise OptionError(name, str(error).removeprefix(f"{name}: ")) from None
    return text


def _scale_of(percent: float) -> str | None:
    if not percent:
        return None
    text = f"{percent:g}%"
    return _checked("scale", placement.scale, text)
