"""The remove.bg drop-in in the OpenAPI document, under its own tag: its request bodies, answers and error bodies
as remove.bg's reference defines them, and the two operations (registered from the routes table)."""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, WithJsonSchema
from pydantic.config import JsonDict

from gateway.domain import removebg
from gateway.http.handlers import removebg as handlers
from gateway.http.openapi import Body, Json, Operation, Reply

TAG = "remove.bg compatible"  # described in gateway/http/openapi.py's tag list
_Binary = Annotated[bytes, WithJsonSchema({"type": "string", "format": "binary"})]


def _enum(values: Iterable[str]) -> JsonDict:
    return {"enum": list[JsonValue](values)}


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_file_b64: str | None = Field(None, description="The image, base64-encoded (one source only).")
    image_url: str | None = Field(
        None, description="The image's URL, fetched like /v1's url (public addresses only; one source only).",
    )
    size: str = Field(
        removebg.DEFAULT_SIZE,
        description="preview (also small, regular): up to 0.25 megapixels, 0.25 credits; medium 1.5 MP, hd 4 MP, "
                    "full (also 4k) 25 MP, 50MP 50 MP, auto = full: 1 credit. PNG results stop at 10 MP.",
        json_schema_extra=_enum(sorted(removebg.SIZES)),
    )
    type: str = Field("auto", description="Accepted and checked; we do not classify subjects (X-Type is always "
                                          "`other`).", json_schema_extra=_enum(sorted(removebg.TYPES)))
    type_level: str = Field("1", description="Accepted and checked, as type.",
                            json_schema_extra=_enum(sorted(removebg.TYPE_LEVELS)))
    format: str = Field("auto", description="auto: png unless a background makes the result opaque (then jpg); "
                                            "zip: color.jpg and the matte alpha.png.",
                        json_schema_extra=_enum(removebg.FORMATS))
    roi: str | None = Field(None, examples=["0% 0% 100% 100%"],
                            description="x1 y1 x2 y2, px or %: only this rectangle can be foreground.")
    crop: bool = Field(False, description="Crop to the subject (true/false, 1/0).")
    crop_margin: str | None = Field(
        None, examples=["30px", "10%", "10px 20px", "10% 5% 10% 5%"],
        description="With crop: 1, 2 or 4 values (top right bottom left), px or % of the subject; capped at 500 px "
                    "and 50 %. Without crop it has no effect.",
    )
    scale: str | None = Field(None, examples=["50%"],
                              description="10%..100% of the canvas, or original; implies position center.")
    position: str | None = Field(None, examples=["center", "50% 100%"],
                                 description="original, center, or one or two percentages (horizontal vertical).")
    channels: str = Field("rgba", description="rgba, or alpha for the matte only (a grayscale PNG).",
                          json_schema_extra=_enum(("rgba", "alpha")))
    add_shadow: bool = Field(False, description="A soft shadow computed from the matte under the subject.")
    semitransparency: bool = Field(True, description="Accepted; the model's soft matte is kept either way.")
    bg_color: str | None = Field(None, examples=["81d4fa", "#fff", "green"],
                                 description="Hex (3 or 6 digits, # optional) or a colour name.")
    bg_image_url: str | None = Field(None, description="A background image's URL, fetched like image_url.")
    decontaminate: bool = Field(
        True, description="Our extension, not a remove.bg parameter (/v1's option of the same name): soft edges' "
                          "colours (hair, fur, motion blur) freed of the old background, alpha unchanged; false keeps "
                          "the photo's own colours (true/false, 1/0).",
    )


class RemoveBgForm(_Params):
    """POST /v1.0/removebg as multipart/form-data (or the same fields urlencoded, without the files)."""

    image_file: _Binary | None = Field(None, description="The image (JPG, PNG or WEBP); one source only.")
    bg_image_file: _Binary | None = Field(None, description="A background image file.")


class RemoveBgJson(_Params):
    """POST /v1.0/removebg as application/json."""


class RemoveBgResultData(BaseModel):
    result_b64: str = Field(description="The result's bytes, base64.")
    foreground_top: int
    foreground_left: int
    foreground_width: int
    foreground_height: int


class RemoveBgResult(BaseModel):
    """The answer to `Accept: application/json`."""

    data: RemoveBgResultData


# remove.bg's error body, inline in each error response (the error responses are not models of ours).
_ERRORS_SCHEMA: Json = {
    "type": "object", "required": ["errors"], "description": "remove.bg's error body.",
    "properties": {"errors": {"type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["title", "code", "detail"],
        "properties": {"title": {"type": "string"}, "code": {"type": "string"}, "detail": {"type": "string"}},
    }}},
}


class RemoveBgCredits(BaseModel):
    total: float | None = Field(description="Credits (our images) left this month; null: no monthly limit.")
    subscription: float | None
    payg: float
    enterprise: float


class RemoveBgApi(BaseModel):
    free_calls: int = Field(description="Always 0: every call is billed to the plan.")
    sizes: str = Field(description="Always all: every size tier is open to every plan.")


class RemoveBgAttributes(BaseModel):
    credits: RemoveBgCredits
    api: RemoveBgApi


class RemoveBgAccountData(BaseModel):
    attributes: RemoveBgAttributes


class RemoveBgAccount(BaseModel):
    """remove.bg's account object, from our plan and this month's use."""

    data: RemoveBgAccountData


def _error(name: str, description: str, code: str, title: str, retry_after: bool = False) -> tuple[str, Json]:
    reply: Json = {
        "description": description,
        "content": {"application/json": {
            "schema": _ERRORS_SCHEMA,
            "example": {"errors": [{"title": title, "code": code, "detail": description}]},
        }},
    }
    if retry_after:
        reply["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}}
    return name, reply


_AUTH = _error("RemoveBgAuthFailed", "The X-Api-Key header is missing or names no active key.", "auth_failed", "Authentication failed")
_LIMITED = _error("RemoveBgRateLimited", "Over the plan's requests per minute.", "rate_limit_exceeded", "Rate limit exceeded", True)
_SERVER = _error("RemoveBgServerError", "The server failed.", "server_error", "Internal Server Error")
_UNAVAILABLE = _error("RemoveBgUnavailable", "Inference or a store is unavailable for a moment; retry after Retry-After.",
                      "server_error", "Service Unavailable", True)
_RESULT_HEADERS: Json = {
    name: {"schema": {"type": "string"}, "description": text} for name, text in (
        ("X-Width", "The result's width in px."), ("X-Height", "The result's height in px."),
        ("X-Type", "Always `other`: subjects are not classified."),
        ("X-Credits-Charged", "1, or 0.25 for a preview."),
        ("X-Foreground-Top", "The subject's box in the result's pixels."), ("X-Foreground-Left", "As X-Foreground-Top."),
        ("X-Foreground-Width", "As X-Foreground-Top."), ("X-Foreground-Height", "As X-Foreground-Top."),
        ("X-Image-Id", "The result is kept in the image library (GET /v1/images/{image_id})."),
    )
}
_EXAMPLE_FORM: dict[str, Any] = {"image_file": b"", "size": "auto"}


def operations() -> tuple[Operation, ...]:
    return (
        Operation(
            "post", "/v1.0/removebg", handlers.remove_background, "removebgRemoveBackground", TAG,
            "Remove the background (remove.bg compatible)",
            "remove.bg's POST /v1.0/removebg: exactly one of image_file (multipart), image_file_b64 or image_url, in "
            "a multipart form, an urlencoded form (application/x-www-form-urlencoded, the JSON body's fields) or a "
            "JSON body; booleans as true/false or 1/0. Answers the image "
            "(or JSON with result_b64 for Accept: application/json). Nothing is billed for an error; a result "
            "without foreground is 400 unknown_foreground. Honours Idempotency-Key like /v1.",
            Reply(HTTPStatus.OK, "The result: the image's bytes, or JSON for Accept: application/json.",
                  RemoveBgResult, {"data": {"result_b64": "iVBORw0KGgo...", "foreground_top": 64,
                                            "foreground_left": 212, "foreground_width": 590, "foreground_height": 704}},
                  content={media: {"schema": {"type": "string", "format": "binary"}}
                           for media in ("image/png", "image/jpeg", "image/webp", "application/zip")},
                  headers=_RESULT_HEADERS),
            # application/x-www-form-urlencoded takes RemoveBgJson's fields too (remove.bg's "URL in a form").
            bodies=(Body("multipart/form-data", RemoveBgForm, _EXAMPLE_FORM),
                    Body("application/json", RemoveBgJson,
                         {"image_file_b64": "iVBORw0KGgo...", "format": "zip", "size": "full"})),
            binary_answer=True,
            own_errors={
                "400": _error("RemoveBgBadRequest", "Invalid parameters, an image that cannot be processed, or no foreground found "
                              "(unknown_foreground); no credits charged.", "invalid_parameters", "Invalid parameters"),
                "402": _error("RemoveBgInsufficientCredits", "Not enough credits (the plan's monthly images); no credits charged.",
                              "insufficient_credits", "Insufficient credits"),
                "403": _AUTH,
                "408": _error("RemoveBgRequestTimeout", "The request body did not arrive in time.", "invalid_parameters",
                              "Request Timeout"),
                "429": _LIMITED, "500": _SERVER, "503": _UNAVAILABLE,
                "504": _error("RemoveBgGatewayTimeout", "The image was not processed within the deadline; retry.",
                              "server_error", "Gateway Timeout"),
            },
        ),
        Operation(
            "get", "/v1.0/account", handlers.get_account, "removebgAccount", TAG, "Credits (remove.bg compatible)",
            "remove.bg's GET /v1.0/account from our plan: credits.total and .subscription are the plan's monthly "
            "images less those used this month (null without a monthly limit), payg and enterprise 0, free_calls 0.",
            Reply(HTTPStatus.OK, "The account.", RemoveBgAccount, {"data": {"attributes": {
                "credits": {"total": 457.75, "subscription": 457.75, "payg": 0, "enterprise": 0},
                "api": {"free_calls": 0, "sizes": "all"}}}}),
            own_errors={"403": _AUTH, "429": _LIMITED, "500": _SERVER, "503": _UNAVAILABLE},
        ),
    )
