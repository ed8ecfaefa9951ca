"""POST /v1/remove-background[/url|/file|/batch]: one image now (as the JSON envelope or, asked for with Accept,
the cut-out's bytes), or a batch in the background; each at most once per Idempotency-Key.

Beside them, operations that each take one body form and give one kind of answer, so that a client generated
from the OpenAPI document (most generators type one request and one response media type per operation) can
reach every form: /url/image and /file/image always answer the cut-out's bytes, /batch/urls takes only JSON and
/batch/files only multipart. Each runs the same code as its negotiating twin."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeVar

from aiohttp import hdrs, web

from contract.options import OptionError, OutputFormat
from gateway.domain import idempotency, images
from gateway.domain.accounts import Account
from gateway.domain.idempotency import StoredAnswer
from gateway.domain.images import ImageSource
from gateway.domain.plans import get_plan
from gateway.domain.removals import Batch
from gateway.errors import ApiError, Forbidden, InvalidRequest, NotFound
from gateway.http.appkeys import (
    IDEMPOTENCY,
    IDEMPOTENCY_KEY,
    REPLAY_SLOTS,
    SESSIONS,
    SETTINGS,
    UPLOAD_SLOTS,
    account_of,
    removals_of,
    request_id_of,
)
from gateway.http.handlers.envelope import json_body, send_stored, upload_timeouts
from gateway.http.middlewares import add_api_headers, idempotent
from gateway.http.negotiation import IMAGE_TYPES, JSON, choose_answer, choose_image
from gateway.http.uploads import MultipartForm, UploadedFile, read_form
from gateway.schemas import (
    BatchAcceptedEnvelope,
    BatchUrlRequest,
    EmptyMeta,
    FileRequest,
    ImageEnvelope,
    RemovalParams,
    UrlRequest,
    batch_accepted,
    dump,
    parse,
)

_Params = TypeVar("_Params", bound=RemovalParams)


@dataclass(frozen=True)
class Answer:
    """What a removal request answers: the JSON envelope, or (media_type an image type) the cut-out's bytes,
    `output`, of the image the envelope describes."""

    status: HTTPStatus
    envelope: Mapping[str, Any]
    media_type: str = JSON
    output: bytes | None = None


def foreground_headers(image_json: Mapping[str, Any]) -> dict[str, str]:
    """X-Foreground-Left/Top/Width/Height from the image's `foreground` box ({left, top, width, height}),
    when its JSON has one (the box is added by the subject-crop feature); none otherwise."""
    box = image_json.get("foreground")
    if not isinstance(box, Mapping):
        return {}
    return {
        f"X-Foreground-{name.title()}": str(box[name])
        for name in ("left", "top", "width", "height")
        if isinstance(box.get(name), int)
    }


def _image_headers(data: Mapping[str, Any]) -> dict[str, str]:
    """An image answer's facts in headers (the record, with output_url, exists as for a JSON answer)."""
    image_id = str(data["id"])
    return {
        "X-Image-Id": image_id,
        "X-Width": str(data.get("width", "")),
        "X-Height": str(data.get("height", "")),
        **foreground_headers(data),
        hdrs.CONTENT_DISPOSITION: f'inline; filename="{image_id}.{OutputFormat(str(data["output_format"])).extension}"',
        hdrs.VARY: "Accept",
    }


def _image_response(data: Mapping[str, Any], media_type: str, output: bytes) -> web.Response:
    """The cut-out itself, its facts in headers."""
    return web.Response(body=output, content_type=media_type, headers=_image_headers(data))


def _render(answer: Answer) -> web.Response:
    if answer.output is not None:
        return _image_response(answer.envelope["data"], answer.media_type, answer.output)
    response = web.json_response(dict(answer.envelope), status=int(answer.status))
    response.headers[hdrs.VARY] = "Accept"
    return response


async def _replay(request: web.Request, first: StoredAnswer) -> web.StreamResponse:
    """The first answer again: the same status and envelope; for an image answer the same stored cut-out. At
    most max_replays_per_account of an account's replays run at once on this replica (429 beyond)."""
    async with request.app[REPLAY_SLOTS].hold(account_of(request).id):
        if first.media_type != JSON:
            return await _replay_image(request, first)
        response = web.json_response(dict(first.body), status=first.status)
        response.headers[hdrs.VARY] = "Accept"
        response.headers[idempotency.REPLAYED_HEADER] = "true"
        return response


async def _replay_image(request: web.Request, first: StoredAnswer) -> web.StreamResponse:
    """The stored cut-out, streamed from the store a chunk at a time as the client reads it: however big the
    output and however slow the client, a replay holds a chunk or two of it, never the whole object."""
    data = first.body["data"]
    gone = "the image this Idempotency-Key made has been deleted"
    image = await images.get_image(request.app[SESSIONS], account_of(request).id, str(data["id"]))
    if image is None:
        raise NotFound(gone)
    headers = _image_headers(data)
    stored = await removals_of(request).open_output(image, gone=gone)
    response = web.StreamResponse(status=first.status, headers=headers)
    response.content_type = first.media_type
    response.content_length = stored.size
    response.headers[idempotency.REPLAYED_HEADER] = "true"
    add_api_headers(request, response)  # the head leaves here, before the envelope middleware sees it
    await send_stored(request, response, stored, f"replay of {data['id']}")
    return response


async def _once(
    request: web.Request, body_digest: str, media_type: str, run: Callable[[], Awaitable[Answer]]
) -> web.StreamResponse:
    """Runs the request, or (same Idempotency-Key, same request) replays its first answer; see
    gateway/domain/idempotency.py for the rules."""
    key = request.get(IDEMPOTENCY_KEY)
    if key is None:
        return _render(await run())
    keys = request.app[IDEMPOTENCY]
    fingerprint = idempotency.fingerprint(
        request.method, request.path, request.query.items(), body_digest, request.headers.get(hdrs.ACCEPT),
        media_type,
    )
    held = await keys.begin(account_of(request).id, key, fingerprint)
    if isinstance(held, StoredAnswer):
        return await _replay(request, held)
    try:
        answer = await run()
    except ApiError as error:
        await keys.finish(held, StoredAnswer(int(error.status), JSON, error.envelope()))
        raise
    except BaseException:
        await keys.release(held)
        raise
    await keys.finish(held, StoredAnswer(int(answer.status), answer.media_type, answer.envelope))
    return _render(answer)


def _negotiated(request: web.Request, params: _Params, *, image_only: bool) -> tuple[_Params, str | None]:
    """The params (output_format set from Accept when the request did not set it) and the answer's
    output_format when the answer is the image's bytes (None: the JSON envelope); 406 if neither fits.
    image_only: the operation always answers the bytes."""
    explicit = params.output_format if "output_format" in params.model_fields_set else None
    accept = request.headers.get(hdrs.ACCEPT)
    answer_format = choose_image(accept, explicit) if image_only else choose_answer(accept, explicit)
    if answer_format is not None and explicit is None:
        params = params.model_copy(update={"output_format": OutputFormat(answer_format)})
    return params, answer_format


def _form_digest(form: MultipartForm) -> str:
    """A multipart request's body, for the Idempotency-Key fingerprint: every text field and every file part
    (the image or images and a bg_image), each file by its name, size and sha256 (hashed while it was spooled)."""

    def described(file: UploadedFile) -> list[str | int]:
        return [file.filename, file.size, file.sha256]

    return idempotency.json_digest({
        "fields": form.fields, "files": [described(file) for file in form.files],
        "named_files": {name: described(file) for name, file in sorted(form.named_files.items())},
    })


def _check_bg_image_part(params: RemovalParams, form: MultipartForm) -> UploadedFile | None:
    """The `bg_image` file part, if any, checked against the options it cannot go with."""
    upload = form.named_files.get(BG_IMAGE_FIELD)
    if upload is None:
        return None
    if not upload.size:
        raise InvalidRequest("bg_image: the file is empty")
    try:
        params.options.check(bg_image=True)
    except OptionError as error:
        raise InvalidRequest(str(error)) from error
    return upload


async def _remove_one(
    request: web.Request,
    params: RemovalParams,
    source: ImageSource,
    data: bytes | None,
    answer_format: str | None,
    background: bytes | None = None,
) -> Answer:
    completed = await removals_of(request).submit_single(
        account_of(request), source, params.options, data=data, background=background,
        webhook_url=params.webhook_url, request_id=request_id_of(request),
    )
    envelope = dump(ImageEnvelope(success=True, data=completed.image, meta=EmptyMeta()))
    if answer_format is None:
        return Answer(HTTPStatus.OK, envelope)
    return Answer(HTTPStatus.OK, envelope, IMAGE_TYPES[answer_format], completed.output)


@idempotent
async def remove_from_url(request: web.Request) -> web.StreamResponse:
    """POST /v1/remove-background/url and POST /v1/remove-background (JSON)."""
    return await _from_url(request, image_only=False)


@idempotent
async def remove_from_url_as_image(request: web.Request) -> web.StreamResponse:
    """POST /v1/remove-background/url/image: the same, answering the cut-out's bytes."""
    return await _from_url(request, image_only=True)


async def _from_url(request: web.Request, *, image_only: bool) -> web.StreamResponse:
    raw = await json_body(request)
    params, answer_format = _negotiated(request, parse(UrlRequest, raw), image_only=image_only)
    removals_of(request).check_url("url", params.url)

    async def run() -> Answer:
        return await _remove_one(request, params, ImageSource(original_url=params.url), None, answer_format)

    media_type = IMAGE_TYPES[answer_format] if answer_format else JSON
    return await _once(request, idempotency.json_digest(raw), media_type, run)


# The multipart forms' text fields: the options, each at most once; any other field name is refused.
_FORM_FIELDS = frozenset(FileRequest.model_fields)
# The optional file part with a background image (with `file` or `files`).
BG_IMAGE_FIELD = "bg_image"


@idempotent
async def remove_from_file(request: web.Request) -> web.StreamResponse:
    """POST /v1/remove-background/file (multipart/form-data: file plus the options as fields)."""
    return await _from_file(request, image_only=False)


@idempotent
async def remove_from_file_as_image(request: web.Request) -> web.StreamResponse:
    """POST /v1/remove-background/file/image: the same, answering the cut-out's bytes."""
    return await _from_file(request, image_only=True)


async def _from_file(request: web.Request, *, image_only: bool) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    account = account_of(request)
    # Before the upload: an Accept that no output format can satisfy costs the client one round trip.
    (choose_image if image_only else choose_answer)(request.headers.get(hdrs.ACCEPT), None)
    # The slot is held through processing: the image is in memory then, and the cap bounds how many such
    # copies one account can have at once. The spool goes as soon as the bytes are read.
    async with request.app[UPLOAD_SLOTS].hold(account.id), read_form(
        request, file_field="file", text_fields=_FORM_FIELDS, max_files=1,
        max_file_bytes=settings.max_upload_bytes, timeouts=upload_timeouts(request),
        spool_root=settings.spool_dir, extra_file_fields=(BG_IMAGE_FIELD,),
    ) as form:
        params, answer_format = _negotiated(request, parse(FileRequest, form.fields), image_only=image_only)
        if not form.files:
            raise InvalidRequest("file: a file field with the image is required")
        upload = form.files[0]
        if not upload.size:
            raise InvalidRequest("file: the file is empty")
        bg_upload = _check_bg_image_part(params, form)
        source = ImageSource(original_filename=upload.filename[:255] or None)

        async def run() -> Answer:
            data = await asyncio.to_thread(upload.read)
            background = await asyncio.to_thread(bg_upload.read) if bg_upload else None
            return await _remove_one(request, params, source, data, answer_format, background)

        media_type = IMAGE_TYPES[answer_format] if answer_format else JSON
        return await _once(request, _form_digest(form), media_type, run)


@idempotent
async def remove_batch(request: web.Request) -> web.StreamResponse:
    """POST /v1/remove-background/batch: `urls` as JSON or `files` as multipart; answers 202 at once."""
    return await _batch(request, None)


@idempotent
async def remove_batch_of_urls(request: web.Request) -> web.StreamResponse:
    """POST /v1/remove-background/batch/urls: the batch as JSON `urls` only."""
    return await _batch(request, JSON)


@idempotent
async def remove_batch_of_files(request: web.Request) -> web.StreamResponse:
    """POST /v1/remove-background/batch/files: the batch as multipart `files` only."""
    return await _batch(request, MULTIPART)


MULTIPART = "multipart/form-data"


async def _batch(request: web.Request, body_type: str | None) -> web.StreamResponse:
    """body_type: the one Content-Type the operation takes (None: JSON or multipart, told by the header)."""
    account = account_of(request)
    if not get_plan(account.plan).batch_allowed:
        raise Forbidden("batch processing is available on the Pro and Enterprise plans")
    # A batch answers only with JSON (its images are not done yet): 406 for an Accept that refuses it.
    choose_answer(request.headers.get(hdrs.ACCEPT), None, image_allowed=False)
    if body_type is not None and request.content_type != body_type:
        raise InvalidRequest(f"{request.path} takes only Content-Type: {body_type}")
    if request.content_type == MULTIPART:
        return await _batch_of_files(request, account)
    settings = request.app[SETTINGS]
    removals = removals_of(request)
    raw = await json_body(request)
    body = parse(BatchUrlRequest, raw)
    if len(body.urls) > settings.max_batch_images:
        raise InvalidRequest(f"urls: at most {settings.max_batch_images} images per batch")
    for index, url in enumerate(body.urls):
        removals.check_url(f"urls.{index}", url)
    removals.check_added_urls(body.options, body.webhook_url)
    await removals.check_model(body.options)

    async def run() -> Answer:
        batch = await removals.submit_batch(account, body.urls, body.options, webhook_url=body.webhook_url)
        return _batch_answer(batch)

    return await _once(request, idempotency.json_digest(raw), JSON, run)


async def _batch_of_files(request: web.Request, account: Account) -> web.StreamResponse:
    """A batch of uploaded files: spooled to disk as they arrive, then copied to storage to wait their turn."""
    settings = request.app[SETTINGS]
    removals = removals_of(request)
    # Before the body is read: a full queue costs the client one round trip, not an upload.
    await removals.check_batch_queue(account, 1)
    async with request.app[UPLOAD_SLOTS].hold(account.id), read_form(
        request, file_field="files", text_fields=_FORM_FIELDS, max_files=settings.max_batch_images,
        max_file_bytes=settings.max_upload_bytes, timeouts=upload_timeouts(request), spool_root=settings.spool_dir,
        extra_file_fields=(BG_IMAGE_FIELD,),
    ) as form:
        params = parse(FileRequest, form.fields)
        if not form.files:
            raise InvalidRequest("files: give one or more image files (or 'urls' as JSON)")
        for index, upload in enumerate(form.files):
            if not upload.size:
                raise InvalidRequest(f"files.{index}: the file is empty")
        bg_upload = _check_bg_image_part(params, form)
        removals.check_added_urls(params.options, params.webhook_url)
        await removals.check_model(params.options)

        async def run() -> Answer:
            batch = await removals.submit_uploaded_batch(
                account, form.files, params.options, background=bg_upload, webhook_url=params.webhook_url
            )
            return _batch_answer(batch)

        return await _once(request, _form_digest(form), JSON, run)


def _batch_answer(batch: Batch) -> Answer:
    return Answer(
        HTTPStatus.ACCEPTED, dump(BatchAcceptedEnvelope(success=True, data=batch_accepted(batch), meta=EmptyMeta()))
    )
