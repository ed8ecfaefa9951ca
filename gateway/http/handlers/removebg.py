"""The remove.bg API's HTTP shape over our one engine: POST /v1.0/removebg and GET /v1.0/account.

Code written against remove.bg works by changing its base URL: the same parameters (multipart, urlencoded or
JSON bodies), answers (the image bytes, or JSON with result_b64 for `Accept: application/json`), headers (X-Width,
X-Height, X-Type, X-Credits-Charged, X-Foreground-*, X-RateLimit-*) and error bodies
({"errors": [{"title", "code", "detail"}]}, 400/402/403/429). Accounts, keys, plans, quotas, rate limits,
Idempotency-Key, metrics, logs, the fetch guard and the upload limits are /v1's. Results are kept in the image
library like /v1's (X-Image-Id names them). The vocabulary mapping is gateway/domain/removebg.py; docs/removebg.md
says what differs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import hdrs, web

from gateway.domain import idempotency, images, quota, removebg
from gateway.domain.idempotency import StoredAnswer
from gateway.domain.images import ImageSource
from gateway.domain.plans import get_plan
from gateway.errors import (
    ApiError,
    InvalidApiKey,
    InvalidRequest,
    NoForeground,
    NotAcceptable,
    NotFound,
    QuotaExceeded,
    RateLimitExceeded,
    TooManyUploads,
    UnprocessableEntity,
    UnsupportedMediaType,
)
from gateway.http.appkeys import (
    IDEMPOTENCY,
    IDEMPOTENCY_KEY,
    SESSIONS,
    SETTINGS,
    UPLOAD_SLOTS,
    account_of,
    removals_of,
    request_id_of,
)
from gateway.http.handlers.envelope import upload_timeouts
from gateway.http.middlewares import add_api_headers, idempotent, renders_errors
from gateway.http.uploads import ENVELOPE_BYTES, UploadedFile, read_form, read_json, read_urlencoded

JSON = "application/json"
# Our error classes -> remove.bg's status, code and title (its reference: 400 for bad input, 402 for credits,
# 403 for the key, 429 for the rate limit; the rest keep our status).
_ERRORS: Mapping[type[ApiError], tuple[HTTPStatus, str, str]] = {
    InvalidRequest: (HTTPStatus.BAD_REQUEST, "invalid_parameters", "Invalid parameters"),
    UnsupportedMediaType: (HTTPStatus.BAD_REQUEST, "unsupported_image_type", "Unsupported image type"),
    UnprocessableEntity: (HTTPStatus.BAD_REQUEST, "failed_to_process", "Image could not be processed"),
    InvalidApiKey: (HTTPStatus.FORBIDDEN, "auth_failed", "Authentication failed"),
    QuotaExceeded: (HTTPStatus.PAYMENT_REQUIRED, "insufficient_credits", "Insufficient credits"),
    RateLimitExceeded: (HTTPStatus.TOO_MANY_REQUESTS, "rate_limit_exceeded", "Rate limit exceeded"),
    TooManyUploads: (HTTPStatus.TOO_MANY_REQUESTS, "rate_limit_exceeded", "Rate limit exceeded"),
    NotAcceptable: (HTTPStatus.NOT_ACCEPTABLE, "not_acceptable", "Not acceptable"),
    NotFound: (HTTPStatus.NOT_FOUND, "not_found", "Not found"),
}


_ERRORS_OWN: Mapping[type[ApiError], tuple[HTTPStatus, str, str]] = {
    NoForeground: (HTTPStatus.BAD_REQUEST, "unknown_foreground", "Could not identify foreground in image"),
}


def error_body(error: ApiError) -> dict[str, Any]:
    """remove.bg's error body for one of our errors."""
    _status, code, title = _shape(error)
    return {"errors": [{"title": title, "code": code, "detail": error.message}]}


def _shape(error: ApiError) -> tuple[HTTPStatus, str, str]:
    for kind in type(error).__mro__:
        if kind in _ERRORS_OWN:
            return _ERRORS_OWN[kind]
        if kind in _ERRORS:
            return _ERRORS[kind]
    return error.status, error.code, error.status.phrase


def error_response(error: ApiError) -> web.Response:
    """The middlewares' renderer for this door: same headers (Retry-After), remove.bg's status and body."""
    status, _code, _title = _shape(error)
    return web.json_response(error_body(error), status=int(status), headers=error.headers)


@dataclass(frozen=True)
class _Result:
    """A finished drop-in: the image record's facts (the /v1 image JSON) and the result's bytes."""

    image: Mapping[str, Any]
    output: bytes
    media_type: str
    credits: float


def _wants_json(request: web.Request) -> bool:
    """remove.bg answers JSON when the client's Accept names application/json; otherwise the image bytes."""
    return JSON in request.headers.get(hdrs.ACCEPT, "").lower()


def _headers(image: Mapping[str, Any], credits: float) -> dict[str, str]:
    headers = {
        "X-Image-Id": str(image["id"]),
        "X-Width": str(image.get("width", "")),
        "X-Height": str(image.get("height", "")),
        "X-Type": removebg.SUBJECT_TYPE,
        "X-Credits-Charged": removebg.credits_text(credits),
    }
    box = image.get("foreground")
    if isinstance(box, Mapping):
        headers.update({f"X-Foreground-{name.title()}": str(box[name]) for name in ("top", "left", "width", "height")})
    return headers


def _json_answer(image: Mapping[str, Any], output: bytes) -> dict[str, Any]:
    box = image.get("foreground") or {}
    return {"data": {
        "result_b64": base64.b64encode(output).decode("ascii"),
        "foreground_top": box.get("top"), "foreground_left": box.get("left"),
        "foreground_width": box.get("width"), "foreground_height": box.get("height"),
    }}


def _answer(request: web.Request, result: _Result) -> web.Response:
    headers = _headers(result.image, result.credits)
    if _wants_json(request):
        return web.json_response(_json_answer(result.image, result.output), headers=headers)
    return web.Response(body=result.output, content_type=result.media_type, headers=headers)


@contextlib.asynccontextmanager
async def _parameters(request: web.Request) -> AsyncIterator[tuple[dict[str, Any], dict[str, UploadedFile], str]]:
    """The body's parameters, its file parts (multipart only) and a digest of all of it for Idempotency-Key;
    multipart, urlencoded and JSON bodies alike. Uploaded files are spooled and removed when the context ends."""
    settings = request.app[SETTINGS]
    timeouts = upload_timeouts(request)
    # A base64 image in a text body is 4/3 of the image; the upload limit applies to the decoded bytes.
    max_text_body = settings.max_upload_bytes * 4 // 3 + ENVELOPE_BYTES
    if request.content_type == "multipart/form-data":
        text_fields = removebg.ACCEPTED - set(removebg.FILE_PARAMETERS)
        async with read_form(
            request, file_field="image_file", text_fields=text_fields, max_files=1,
            max_file_bytes=settings.max_upload_bytes, timeouts=timeouts, spool_root=settings.spool_dir,
            extra_file_fields=("bg_image_file",), long_text_fields=("image_file_b64",),
        ) as form:
            files = dict(form.named_files)
            if form.files:
                files["image_file"] = form.files[0]
            for name, upload in files.items():
                if not upload.size:
                    raise InvalidRequest(f"{name}: the file is empty")
            digest = idempotency.json_digest({
                "fields": form.fields,
                "files": {name: [upload.filename, upload.size, upload.sha256] for name, upload in sorted(files.items())},
            })
            yield dict(form.fields), files, digest
        return
    if request.content_type == "application/x-www-form-urlencoded":
        fields: dict[str, Any] = await read_urlencoded(request, max_bytes=max_text_body, timeouts=timeouts)
    elif request.content_type == JSON:
        body = await read_json(request, max_bytes=max_text_body, timeouts=timeouts)
        if not isinstance(body, dict):
            raise InvalidRequest("the JSON body must be an object of parameters")
        fields = body
    else:
        raise InvalidRequest("send multipart/form-data, application/x-www-form-urlencoded or application/json")
    yield fields, {}, idempotency.json_digest(fields)


@renders_errors(error_response)
@idempotent
async def remove_background(request: web.Request) -> web.StreamResponse:
    """POST /v1.0/removebg: one image, processed while the client waits, at most once per Idempotency-Key."""
    settings = request.app[SETTINGS]
    account = account_of(request)
    async with request.app[UPLOAD_SLOTS].hold(account.id), _parameters(request) as (fields, files, digest):
        drop_in = removebg.translate(fields, files=frozenset(files), max_upload_bytes=settings.max_upload_bytes)
        removals = removals_of(request)
        if drop_in.image_url:
            removals.check_url("image_url", drop_in.image_url)
            source = ImageSource(original_url=drop_in.image_url)
        elif drop_in.uploaded:
            source = ImageSource(original_filename=files["image_file"].filename[:255] or None)
        else:
            source = ImageSource()
        media_type = JSON if _wants_json(request) else "image"

        async def run() -> _Result:
            data = drop_in.image_bytes
            if drop_in.uploaded:
                data = await asyncio.to_thread(files["image_file"].read)
            background = await asyncio.to_thread(files["bg_image_file"].read) if drop_in.bg_uploaded else None
            completed = await removebg.cut_out(
                removals, request.app[SESSIONS], account, drop_in, source, data=data, background=background,
                request_id=request_id_of(request),
            )
            image = completed.image.model_dump(mode="json", exclude_unset=True)
            return _Result(image, completed.output, _MEDIA_TYPES[str(image["output_format"])], drop_in.credits)

        return await _once(request, digest, media_type, run)


_MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp", "zip": "application/zip"}


async def _once(request: web.Request, digest: str, media_type: str, run: Any) -> web.StreamResponse:
    """Runs the request, or (same Idempotency-Key, same request) answers as the first did: an error's body
    again, or the first result read back from the store (the stored answer names its image and credits)."""
    key = request.get(IDEMPOTENCY_KEY)
    if key is None:
        return _answer(request, await run())
    keys = request.app[IDEMPOTENCY]
    fingerprint = idempotency.fingerprint(
        request.method, request.path, request.query.items(), digest, request.headers.get(hdrs.ACCEPT), media_type,
    )
    held = await keys.begin(account_of(request).id, key, fingerprint)
    if isinstance(held, StoredAnswer):
        return await _replay(request, held)
    try:
        result = await run()
    except ApiError as error:
        status, _code, _title = _shape(error)
        await keys.finish(held, StoredAnswer(int(status), JSON, error_body(error)))
        raise
    except BaseException:
        await keys.release(held)
        raise
    stored = {"image": dict(result.image), "media_type": result.media_type, "credits": result.credits}
    await keys.finish(held, StoredAnswer(HTTPStatus.OK, media_type, stored))
    return _answer(request, result)


async def _replay(request: web.Request, first: StoredAnswer) -> web.StreamResponse:
    """The first answer again, marked Idempotent-Replayed; a result is read back from the store."""
    if first.status != HTTPStatus.OK:
        response = web.json_response(dict(first.body), status=first.status)
    else:
        image = first.body["image"]
        record = await images.get_image(request.app[SESSIONS], account_of(request).id, str(image["id"]))
        gone = "the image this Idempotency-Key made has been deleted"
        if record is None:
            raise NotFound(gone)
        async with await removals_of(request).open_output(record, gone=gone) as stored:
            output = b"".join([chunk async for chunk in stored.chunks])
        response = _answer(request, _Result(image, output, str(first.body["media_type"]), float(first.body["credits"])))
    response.headers[idempotency.REPLAYED_HEADER] = "true"
    add_api_headers(request, response)
    return response


@renders_errors(error_response)
async def get_account(request: web.Request) -> web.Response:
    """GET /v1.0/account: remove.bg's account object from our plan and this month's use. Credits are our
    images: subscription = the plan's monthly images less those used this month (a preview a quarter), total the
    same, payg and enterprise 0; null for a plan without a monthly limit. free_calls is 0 (every call is billed
    to the plan) and sizes "all" (every size tier is open to every plan)."""
    account = account_of(request)
    plan = get_plan(account.plan)
    used = await quota.credits_used(request.app[SESSIONS], account.id)
    left = None if plan.monthly_images is None else max(0.0, plan.monthly_images - used)
    credits = {"total": _number(left), "subscription": _number(left), "payg": 0, "enterprise": 0}
    return web.json_response({"data": {"attributes": {
        "credits": credits, "api": {"free_calls": 0, "sizes": "all"},
    }}})


def _number(value: float | None) -> float | int | None:
    """Whole numbers as integers (remove.bg's clients read 200, not 200.0)."""
    if value is None:
        return None
    return int(value) if value == int(value) else value
