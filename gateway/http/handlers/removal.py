"""POST /v1/remove-background[/url|/file|/batch]: one image now (as the JSON envelope or, asked for with Accept,
the cut-out's bytes), or a batch in the background; each at most once per Idempotency-Key."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeVar

from aiohttp import hdrs, web

from contract.options import OptionError, OutputFormat
from gateway import metrics
from gateway.domain import idempotency, images, outputs, quota, stored_objects
from gateway.domain.accounts import Account
from gateway.domain.admission import check_batch_queue
from gateway.domain.idempotency import StoredAnswer
from gateway.domain.images import ImageSource
from gateway.domain.plans import get_plan
from gateway.errors import ApiError, Forbidden, InvalidRequest, NotFound, QuotaExceeded
from gateway.http.appkeys import (
    BATCHES,
    IDEMPOTENCY,
    IDEMPOTENCY_KEY,
    PROCESSOR,
    REPLAY_SLOTS,
    SESSIONS,
    SETTINGS,
    UPLOAD_SLOTS,
    account_of,
    request_id_of,
)
from gateway.http.handlers.envelope import json_body, send_stored, upload_timeouts
from gateway.http.middlewares import add_api_headers, idempotent
from gateway.http.negotiation import IMAGE_TYPES, JSON, choose_answer
from gateway.http.uploads import MultipartForm, UploadedFile, read_form
from gateway.net.inference import stored_extra
from gateway.net.urlfetch import FetchError, check_url
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
    if image is None or image.storage_key is None:
        raise NotFound(gone)
    headers = _image_headers(data)
    stored = await outputs.open_output(request.app[PROCESSOR].storage, image.storage_key, gone=gone)
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


def _negotiated(request: web.Request, params: _Params) -> tuple[_Params, str | None]:
    """The params (output_format set from Accept when the request did not set it) and the answer's
    output_format when the answer is the image's bytes (None: the JSON envelope); 406 if neither fits."""
    explicit = params.output_format if "output_format" in params.model_fields_set else None
    answer_format = choose_answer(request.headers.get(hdrs.ACCEPT), explicit)
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


def _check_user_url(field: str, url: str, request: web.Request) -> None:
    """Scheme and literal-address checks before any work; names are checked again when resolved."""
    try:
        check_url(url, request.app[SETTINGS].address_policy)
    except FetchError as exc:
        raise InvalidRequest(f"{field}: {exc}") from exc


def _seconds_to_next_month(now: dt.datetime | None = None) -> int:
    now = now or dt.datetime.now(dt.UTC)
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    next_month = (first + dt.timedelta(days=32)).replace(day=1)
    return max(1, int((next_month - now).total_seconds()))


@contextlib.asynccontextmanager
async def _reservation(request: web.Request, account: Account, n: int) -> AsyncIterator[None]:
    """Reserves n images for the body, which records them; if it fails (a database or storage error) the
    reservation is given back: nothing is billed for images that were never recorded."""
    await _reserve(request, account, n)
    try:
        yield
    except BaseException:
        await quota.release_images(request.app[SESSIONS], account.id, n)
        raise


async def _reserve(request: web.Request, account: Account, n: int) -> None:
    """Counts n images against the monthly quota before any inference, or refuses with 429 quota_exceeded."""
    plan = get_plan(account.plan)
    if not await quota.reserve_images(request.app[SESSIONS], account.id, n, plan.monthly_images):
        metrics.REFUSALS.labels("quota").inc()
        raise QuotaExceeded(
            f"the {plan.name} plan's {plan.monthly_images} images per month are used up"
            + (f"; this batch needs {n}" if n > 1 else ""),
            headers={"Retry-After": str(_seconds_to_next_month())},
        )


def _check_added_urls(params: RemovalParams, request: web.Request) -> None:
    if params.webhook_url:
        _check_user_url("webhook_url", params.webhook_url, request)
    if params.bg_image_url:
        _check_user_url("bg_image_url", params.bg_image_url, request)


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


async def _process_one(
    request: web.Request,
    params: RemovalParams,
    source: ImageSource,
    data: bytes | None,
    answer_format: str | None,
    background: bytes | None = None,
) -> Answer:
    account = account_of(request)
    processor = request.app[PROCESSOR]
    _check_added_urls(params, request)
    options = params.options
    async with _reservation(request, account, 1):
        image = await images.create_image(
            request.app[SESSIONS], account.id, source, output_format=options.output_format.value,
            output_size=options.output_size.value, bg_color=options.bg_color, webhook_url=params.webhook_url,
            claim=processor.claim, extra_options=stored_extra(options),
        )
    try:
        done, output = await processor.process_keeping_output(
            image, data, request_id=request_id_of(request), background=background
        )
    except ApiError as error:
        # The caller gets the error and never the id: a refused image leaves nothing in the library (its quota
        # was given back by process()), and the failure webhook names no id that would answer 404.
        await images.delete_image(request.app[SESSIONS], account.id, image.id)
        await processor.notify(account, params.webhook_url, {**error.envelope(), "meta": {"event": "image.failed"}})
        raise
    result = processor.image_result(done)
    await processor.notify(
        account, params.webhook_url, {"success": True, "data": dump(result), "meta": {"event": "image.completed"}}
    )
    envelope = dump(ImageEnvelope(success=True, data=result, meta=EmptyMeta()))
    if answer_format is None:
        return Answer(HTTPStatus.OK, envelope)
    return Answer(HTTPStatus.OK, envelope, IMAGE_TYPES[answer_format], output)


@idempotent
async def remove_from_url(request: web.Request) -> web.StreamResponse:
    """POST /v1/remove-background/url and POST /v1/remove-background (JSON)."""
    raw = await json_body(request)
    params, answer_format = _negotiated(request, parse(UrlRequest, raw))
    _check_user_url("url", params.url, request)

    async def run() -> Answer:
        return await _process_one(request, params, ImageSource(original_url=params.url), None, answer_format)

    media_type = IMAGE_TYPES[answer_format] if answer_format else JSON
    return await _once(request, idempotency.json_digest(raw), media_type, run)


# The multipart forms' text fields: the options, each at most once; any other field name is refused.
_FORM_FIELDS = frozenset(FileRequest.model_fields)
# The optional file part with a background image (with `file` or `files`).
BG_IMAGE_FIELD = "bg_image"


@idempotent
async def remove_from_file(request: web.Request) -> web.StreamResponse:
    """POST /v1/remove-background/file (multipart/form-data: file plus the options as fields)."""
    settings = request.app[SETTINGS]
    account = account_of(request)
    # Before the upload: an Accept that no output format can satisfy costs the client one round trip.
    choose_answer(request.headers.get(hdrs.ACCEPT), None)
    # The slot is held through processing: the image is in memory then, and the cap bounds how many such
    # copies one account can have at once. The spool goes as soon as the bytes are read.
    async with request.app[UPLOAD_SLOTS].hold(account.id), read_form(
        request, file_field="file", text_fields=_FORM_FIELDS, max_files=1,
        max_file_bytes=settings.max_upload_bytes, timeouts=upload_timeouts(request),
        spool_root=settings.spool_dir, extra_file_fields=(BG_IMAGE_FIELD,),
    ) as form:
        params, answer_format = _negotiated(request, parse(FileRequest, form.fields))
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
            return await _process_one(request, params, source, data, answer_format, background)

        media_type = IMAGE_TYPES[answer_format] if answer_format else JSON
        return await _once(request, _form_digest(form), media_type, run)


async def _check_model(request: web.Request, params: RemovalParams) -> None:
    """A batch names its model before it is queued: an unknown one is a 400 now, not 20 failed images later.
    (A single image learns it from the inference service's own answer, which names the same models.)"""
    if not params.model:
        return
    models = await request.app[PROCESSOR].inference.list_models()
    if params.model not in {m.name for m in models}:
        available = ", ".join(sorted(m.name for m in models))
        raise InvalidRequest(f"model: unknown model {params.model!r}; available: {available}")


async def _check_batch_queue(request: web.Request, account: Account, adding: int) -> None:
    settings = request.app[SETTINGS]
    await check_batch_queue(
        request.app[SESSIONS], account.id, adding=adding, cap=settings.max_queued_batch_images_per_account,
        retry_after_s=settings.upload_retry_after_s,
    )


@idempotent
async def remove_batch(request: web.Request) -> web.StreamResponse:
    """POST /v1/remove-background/batch: `urls` as JSON or `files` as multipart; answers 202 at once."""
    account = account_of(request)
    if not get_plan(account.plan).batch_allowed:
        raise Forbidden("batch processing is available on the Pro and Enterprise plans")
    # A batch answers only with JSON (its images are not done yet): 406 for an Accept that refuses it.
    choose_answer(request.headers.get(hdrs.ACCEPT), None, image_allowed=False)
    if request.content_type == "multipart/form-data":
        return await _batch_of_files(request, account)
    settings = request.app[SETTINGS]
    raw = await json_body(request)
    body = parse(BatchUrlRequest, raw)
    if len(body.urls) > settings.max_batch_images:
        raise InvalidRequest(f"urls: at most {settings.max_batch_images} images per batch")
    for index, url in enumerate(body.urls):
        _check_user_url(f"urls.{index}", url, request)
    _check_added_urls(body, request)
    await _check_model(request, body)

    async def run() -> Answer:
        await _check_batch_queue(request, account, len(body.urls))
        async with _reservation(request, account, len(body.urls)):
            return await _submit_batch(request, account, body, [ImageSource(original_url=url) for url in body.urls])

    return await _once(request, idempotency.json_digest(raw), JSON, run)


async def _batch_of_files(request: web.Request, account: Account) -> web.StreamResponse:
    """A batch of uploaded files: spooled to disk as they arrive, then copied to storage to wait their turn."""
    settings = request.app[SETTINGS]
    # Before the body is read: a full queue costs the client one round trip, not an upload.
    await _check_batch_queue(request, account, 1)
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
        _check_added_urls(params, request)
        await _check_model(request, params)

        async def run() -> Answer:
            await _check_batch_queue(request, account, len(form.files))
            storage = request.app[PROCESSOR].storage
            stored: list[str] = []  # every key put so far, removed again if the batch is not recorded
            async with _reservation(request, account, len(form.files)):
                try:
                    sources: list[ImageSource] = []
                    for upload in form.files:
                        # Originals wait in storage, so a gateway restarted mid-batch still has them. A background
                        # image is stored once per image: each image removes its own copy when it is done.
                        key = stored_objects.new_source_key("src")
                        stored.append(key)
                        await storage.put_file(key, upload.path, "application/octet-stream")
                        bg_key = None
                        if bg_upload is not None:
                            bg_key = stored_objects.new_source_key("bg")
                            stored.append(bg_key)
                            await storage.put_file(bg_key, bg_upload.path, "application/octet-stream")
                        sources.append(ImageSource(
                            original_filename=upload.filename[:255] or None, source_key=key, bg_source_key=bg_key
                        ))
                    return await _submit_batch(request, account, params, sources)
                except BaseException:
                    await stored_objects.delete_objects(storage, stored)
                    raise

        return await _once(request, _form_digest(form), JSON, run)


async def _submit_batch(
    request: web.Request, account: Account, params: RemovalParams, sources: list[ImageSource]
) -> Answer:
    options = params.options
    batch = await images.create_batch(
        request.app[SESSIONS], account.id, sources, output_format=options.output_format.value,
        output_size=options.output_size.value, bg_color=options.bg_color, webhook_url=params.webhook_url,
        extra_options=stored_extra(options),
    )
    request.app[BATCHES].submit(account.id, batch.id)
    return Answer(
        HTTPStatus.ACCEPTED, dump(BatchAcceptedEnvelope(success=True, data=batch_accepted(batch), meta=EmptyMeta()))
    )
