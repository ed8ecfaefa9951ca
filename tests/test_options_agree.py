"""The four sides that take removal options agree with their one definition (contract/options.py): the
gateway's request schema and OpenAPI text, the gRPC message the gateway sends and the rows it stores, the
inference service's validation of that message, and the CLI's flags. The same values go through each; they
must accept, refuse (naming the same option) and forward alike."""

from __future__ import annotations

import argparse
import contextlib
import math
from dataclasses import replace
from typing import Any

import pytest

from contract.options import (
    BY_NAME,
    MAX_CROP_MARGIN_PX,
    OPTIONS,
    CropMargin,
    OptionError,
    OutputFormat,
    RemovalOptions,
    parse_color,
    rgb_of,
)
from gateway.domain.images import STORED_IN_COLUMNS, stored_extra, stored_options
from gateway.errors import InvalidRequest
from gateway.schemas import FileRequest, RemovalParams, UrlRequest, parse
from inference_service import options as service
from inference_service.errors import InvalidRequest as ServiceInvalidRequest
from removai.v1 import inference_pb2 as pb
from removai_cli.__main__ import _options, _parser
from removai_cli.inputs import UsageError

# Fields a request body has that are not removal options (where to send the result, what to process).
NOT_OPTIONS = {"webhook_url"}

# Option values as a form or a command line gives them: accepted everywhere, or refused everywhere naming the
# option in the second element. Margins around the limits: the drift this file exists for was a pattern that
# took 4 digits in the CLI and 5 in the gateway.
ACCEPTED: list[dict[str, str]] = [
    {},
    {"output_format": "jpeg"},
    {"output_format": "webp", "output_size": "small"},
    {"bg_color": "fff"},
    {"bg_color": "#FFF"},
    {"bg_color": "ff8000"},
    {"bg_color": "#ff8000"},
    {"bg_color": "cornflowerblue"},
    {"crop": "true"},
    {"crop": "true", "crop_margin": "2000px"},
    {"crop": "true", "crop_margin": "2000"},
    {"crop": "true", "crop_margin": "0"},
    {"crop": "true", "crop_margin": "12.5%"},
    {"crop": "true", "crop_margin": "100%"},
    {"output_type": "mask"},
    {"output_type": "mask", "crop": "true", "crop_margin": "5%"},
    {"model": "isnet_int8"},
    {"bg_image_url": "https://example.com/beach.jpg", "output_format": "jpg"},
    {"output_format": "zip"},
    {"crop": "true", "crop_margin": "10px 5%"},
    {"crop": "true", "crop_margin": "1 2 3 2000px"},
    {"roi": "0% 0% 50% 100%"},
    {"roi": "10 20px 300px 400"},
    {"scale": "10%", "position": "0% 100%"},
    {"scale": "original", "position": "center"},
    {"position": "25%"},
    {"add_shadow": "true"},
    {"max_megapixels": "0.25"},
    {"decontaminate": "false"},
    {"decontaminate": "false", "bg_color": "red", "output_format": "jpg"},
]
REFUSED: list[tuple[dict[str, str], str]] = [
    ({"output_format": "gif"}, "output_format"),
    ({"output_format": "PNG"}, "output_format"),
    ({"output_size": "huge"}, "output_size"),
    ({"bg_color": "#GG0000"}, "bg_color"),
    ({"bg_color": "#FF800000"}, "bg_color"),
    ({"bg_color": "#ff80"}, "bg_color"),
    ({"bg_color": "notacolour"}, "bg_color"),
    ({"crop": "true", "crop_margin": "20000px"}, "crop_margin"),
    ({"crop": "true", "crop_margin": "2001"}, "crop_margin"),
    ({"crop": "true", "crop_margin": "100.5%"}, "crop_margin"),
    ({"crop": "true", "crop_margin": "10em"}, "crop_margin"),
    ({"crop_margin": "10px"}, "crop_margin"),
    ({"output_type": "mask", "output_format": "jpg"}, "output_format"),
    ({"output_type": "mask", "bg_color": "fff"}, "output_type"),
    ({"output_type": "mask", "bg_image_url": "https://example.com/beach.jpg"}, "output_type"),
    ({"bg_color": "fff", "bg_image_url": "https://example.com/beach.jpg"}, "bg_color"),
    ({"model": "two words"}, "model"),
    ({"output_format": "zip", "bg_color": "fff"}, "output_format"),
    ({"crop": "true", "crop_margin": "1px 2px 3px"}, "crop_margin"),
    ({"crop": "true", "crop_margin": "1px 2px 3px 2001px"}, "crop_margin"),
    ({"roi": "0 0 50%"}, "roi"),
    ({"roi": "50 0 10 100"}, "roi"),
    ({"scale": "5%"}, "scale"),
    ({"scale": "101%"}, "scale"),
    ({"position": "left"}, "position"),
    ({"position": "0% 101%"}, "position"),
    ({"output_type": "mask", "add_shadow": "true"}, "add_shadow"),
    ({"max_megapixels": "0"}, "max_megapixels"),
    ({"max_megapixels": "lots"}, "max_megapixels"),
]
ALL = [(values, None) for values in ACCEPTED] + REFUSED


def _ids(case: tuple[dict[str, str], str | None]) -> str:
    return ",".join(f"{name}={value}" for name, value in case[0].items()) or "defaults"


def gateway_outcome(values: dict[str, str]) -> RemovalOptions | str:
    """The options the upload form's fields give, or the option the 400 names."""
    try:
        return parse(FileRequest, values).options
    except InvalidRequest as error:
        return error.message.partition(":")[0]


# The CLI's flag for each option; bg_image_url is --bg-image (a file or a URL), crop and output_type switches.
_FLAG_OPTIONS = {option.cli.flag: option.name for option in OPTIONS if option.cli} | {"--bg-image": "bg_image_url"}


def cli_argv(values: dict[str, str]) -> list[str]:
    argv = ["remove", "photo.jpg"]
    for name, value in values.items():
        option = BY_NAME[name]
        if name == "bg_image_url":
            argv += ["--bg-image", value]
        elif option.cli is not None and option.cli.switch is not None:
            assert value == str(option.cli.switch).lower(), f"the CLI's {option.cli.flag} only sets {option.cli.switch}"
            argv.append(option.cli.flag)
        else:
            assert option.cli is not None
            argv += [option.cli.flag, value]
    return argv


def cli_outcome(values: dict[str, str], capsys: pytest.CaptureFixture[str]) -> RemovalOptions | str:
    """The options the command line gives, or the option its usage error names."""
    try:
        arguments = _parser().parse_args(cli_argv(values))
    except SystemExit:
        message = capsys.readouterr().err
        flag = message.split("argument ", 1)[1].split(":", 1)[0]
        return _FLAG_OPTIONS[flag]
    try:
        return _options(arguments).options
    except UsageError as error:
        return _FLAG_OPTIONS[str(error).partition(":")[0]]


def service_outcome(options: RemovalOptions, *, bg_image_bytes: int = 0) -> service.RemovalOptions | str:
    """What the inference service makes of the message: its options, or the option its refusal names."""
    message = options.message("req")
    message.bg_image_bytes = bg_image_bytes
    try:
        return service.RemovalOptions.from_proto(message)
    except ServiceInvalidRequest as error:
        return str(error).partition(":")[0]


def unchecked(values: dict[str, str]) -> RemovalOptions:
    """The options with each value parsed but no combination rule applied (what a careless caller sends)."""
    return RemovalOptions(**{name: BY_NAME[name].parse(value) for name, value in values.items()})


def test_the_gateway_schema_has_every_option_described_by_the_contract() -> None:
    """RemovalParams has one field per contract option (plus webhook_url), with the contract's description,
    pattern and examples; the JSON schema that feeds the OpenAPI document carries them."""
    fields = set(RemovalParams.model_fields)
    missing = set(BY_NAME) - fields
    assert not missing, f"add to gateway/schemas.py RemovalParams: {', '.join(f'{n} = option_field(...)' for n in missing)}"
    assert fields - set(BY_NAME) == NOT_OPTIONS
    schema = RemovalParams.model_json_schema()
    for option in OPTIONS:
        documented = schema["properties"][option.name]
        assert documented["description"] == option.description, option.name
        branch: dict[str, Any] = next((b for b in documented.get("anyOf", [documented]) if b.get("type") == "string"), {})
        assert branch.get("pattern") == option.pattern, option.name
        assert documented.get("examples", []) == list(option.examples), option.name
    assert schema["properties"]["output_format"]["enum"] == OutputFormat.accepted()
    assert set(UrlRequest.model_fields) - set(RemovalParams.model_fields) == {"url"}


def test_the_cli_has_a_flag_for_every_option_that_names_one() -> None:
    """Each contract option with a CLI flag is a flag of `removai remove`, with the contract's help text."""
    remove = next(
        action for action in _parser()._actions if isinstance(action, argparse._SubParsersAction)
    ).choices["remove"]
    flags = {string: action for action in remove._actions for string in action.option_strings}
    for option in OPTIONS:
        if option.cli is None:
            continue
        assert option.cli.flag in flags, option.name
        assert flags[option.cli.flag].dest == option.name and flags[option.cli.flag].help == option.cli.help


@pytest.mark.parametrize("case", ALL, ids=[_ids(case) for case in ALL])
def test_gateway_cli_and_service_agree(case: tuple[dict[str, str], str | None], capsys: pytest.CaptureFixture[str]) -> None:
    """The gateway's form, the CLI and the inference service accept the same values and refuse the same ones,
    naming the same option; what they accept becomes the same message, and the inference service reads that
    message back as the same options; a stored image gives back the options it was submitted with."""
    values, refused_option = case
    from_gateway = gateway_outcome(values)
    from_cli = cli_outcome(values, capsys)
    if refused_option is not None:
        assert from_gateway == refused_option
        assert from_cli == refused_option
        with contextlib.suppress(OptionError):  # a value no proto field can carry (an enum name) stops here
            background = "bg_image_url" in values
            options = unchecked(values)
            if background:  # the gateway sends a fetched background image as bytes, not as its URL
                options = replace(options, bg_image_url=None)
            assert service_outcome(options, bg_image_bytes=10 if background else 0) == refused_option
        return
    assert isinstance(from_gateway, RemovalOptions) and isinstance(from_cli, RemovalOptions)
    assert from_gateway == from_cli
    assert from_gateway.message("req") == from_cli.message("req")
    from_service = service_outcome(from_gateway)
    assert isinstance(from_service, service.RemovalOptions)
    assert from_service.output_format is from_gateway.output_format
    assert from_service.output_size is from_gateway.output_size
    assert from_service.output_type is from_gateway.output_type
    assert from_service.bg_color == (rgb_of(from_gateway.bg_color) if from_gateway.bg_color else None)
    margin = from_gateway.crop_margin or CropMargin()
    assert (from_service.crop, from_service.crop_margin_px, from_service.crop_margin_percent) == (
        from_gateway.crop, margin.px, margin.percent,
    )
    assert from_service.model == (from_gateway.model or "")
    # The message reads back as itself (bg_image_url is not in it: the gateway sends the fetched image's bytes).
    sent = from_gateway.message("req")
    assert RemovalOptions.from_message(sent).message("req") == sent

    stored = stored_extra(from_gateway)
    assert not set(stored) & set(STORED_IN_COLUMNS)
    restored = stored_options(
        from_gateway.output_format.value, from_gateway.output_size.value, from_gateway.bg_color, stored
    )
    assert restored == from_gateway and restored.fields() == from_gateway.fields()


@pytest.mark.parametrize(
    ("message", "option"),
    [
        (pb.RemovalOptions(output_format=pb.OutputFormat.ValueType(99)), "output_format"),
        (pb.RemovalOptions(crop=True, crop_margin_px=10, crop_margin_percent=10), "crop_margin"),
        (pb.RemovalOptions(crop=True, crop_margin_px=MAX_CROP_MARGIN_PX + 1), "crop_margin"),
        (pb.RemovalOptions(crop=True, crop_margin_percent=math.nan), "crop_margin"),
        (pb.RemovalOptions(bg_color="#12345"), "bg_color"),
        (pb.RemovalOptions(model="a/b"), "model"),
        (pb.RemovalOptions(output_type=pb.OUTPUT_TYPE_MASK, bg_image_bytes=5), "output_type"),
    ],
)
def test_the_service_refuses_what_only_the_message_can_say(message: pb.RemovalOptions, option: str) -> None:
    """Values only a gRPC caller can send (an unknown enum number, both margin units, NaN) are refused by the
    same definition, naming the option."""
    with pytest.raises(ServiceInvalidRequest) as caught:
        service.RemovalOptions.from_proto(message)
    assert str(caught.value).startswith(f"{option}: ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("fff", "#FFFFFF"), ("#FfF", "#FFFFFF"), ("81d4fa", "#81D4FA"), ("#81D4FA", "#81D4FA"), ("Green", "#008000"),
     (" red ", "#FF0000"), ("rebeccapurple", "#663399")],
)
def test_parse_color_accepts_what_people_write(text: str, expected: str) -> None:
    """3 or 6 hex digits with or without '#', any case, or a CSS colour name: '#RRGGBB'."""
    assert parse_color(text) == expected


def test_stored_rows_ignore_names_they_do_not_know() -> None:
    """An option a newer release stored (a name this one does not define) does not break reading the row."""
    restored = stored_options("png", "original", None, {"crop": True, "from_the_future": 3})
    assert restored == RemovalOptions(crop=True)
