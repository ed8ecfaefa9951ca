"""POST /v1/remove-background[/url|/file|/batch]: one image now, or a batch in the background."""

from __future__ import annotations

import datetime as dt
from http import HTTPStatus
from typing import Any

from aiohttp import web

from gateway import images, metrics, quota
from gateway.accounts import new_public_id
from gateway.appkeys import BATCHES, PROCESSOR, SESSIONS, SETTINGS, account_of, request_id_of
from gateway.errors import ApiError, Forbidden, InvalidRequest, QuotaExceeded
from gateway.handlers.envelope import json_body, ok
from gateway.images import ImageSource
from gateway.plans import get_plan
from gateway.schemas import BatchUrlRequest, FileRequest, RemovalParams, UrlRequest, batch_json, parse
from gateway.tables import Account
from gateway.uploads import UploadedFile, read_form
from gateway.urlfetch import FetchError, check_url


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


async def _process_one(
    request: web.Request, params: RemovalParams, source: ImageSource, data: bytes | None
) -> web.Response:
    account = account_of(request)
    processor = request.app[PROCESSOR]
    if params.webhook_url:
        _check_user_url("webhook_url", params.webhook_url, request)
    await _reserve(request, account, 1)
    options = params.options
    image = await images.create_image(
        request.app[SESSIONS], account.id, source, output_format=options.output_format,
        output_size=options.output_size, bg_color=options.bg_color, webhook_url=params.webhook_url,
        claim=processor.claim,
    )
    try:
        done = await processor.process(image, data, request_id=request_id_of(request))
    except ApiError as error:
        await processor.notify(
            account, params.webhook_url,
            {**error.envelope(), "meta": {"event": "image.failed", "image_id": image.id}},
        )
        raise
    body = processor.image_json(done)
    await processor.notify(account, params.webhook_url, {"success": True, "data": body, "meta": {"event": "image.completed"}})
    return ok(body)


async def remove_from_url(request: web.Request) -> web.Response:
    """POST /v1/remove-background/url and POST /v1/remove-background (JSON)."""
    params = parse(UrlRequest, await json_body(request))
    _check_user_url("url", params.url, request)
    return await _process_one(request, params, ImageSource(original_url=params.url), None)


async def remove_from_file(request: web.Request) -> web.Response:
    """POST /v1/remove-background/file (multipart/form-data: file plus the options as fields)."""
    settings = request.app[SETTINGS]
    form = await read_form(request, file_field="file", max_files=1, max_file_bytes=settings.max_upload_bytes)
    params = parse(FileRequest, form.fields)
    if not form.files:
        raise InvalidRequest("file: a file field with the image is required")
    upload = form.files[0]
    if not upload.content:
        raise InvalidRequest("file: the file is empty")
    source = ImageSource(original_filename=upload.filename[:255] or None)
    return await _process_one(request, params, source, upload.content)


async def _read_batch(request: web.Request) -> tuple[RemovalParams, list[str], list[UploadedFile]]:
    """The options and either the URLs (JSON) or the uploaded files (multipart), validated."""
    settings = request.app[SETTINGS]
    if request.content_type == "multipart/form-data":
        form = await read_form(
            request, file_field="files", max_files=settings.max_batch_images,
            max_file_bytes=settings.max_upload_bytes,
        )
        params = parse(FileRequest, form.fields)
        if not form.files:
            raise InvalidRequest("files: give one or more image files (or 'urls' as JSON)")
        for index, upload in enumerate(form.files):
            if not upload.content:
                raise InvalidRequest(f"files.{index}: the file is empty")
        return params, [], form.files
    body = parse(BatchUrlRequest, await json_body(request))
    if len(body.urls) > settings.max_batch_images:
        raise InvalidRequest(f"urls: at most {settings.max_batch_images} images per batch")
    for index, url in enumerate(body.urls):
        _check_user_url(f"urls.{index}", url, request)
    return body, body.urls, []


async def remove_batch(request: web.Request) -> web.Response:
    """POST /v1/remove-background/batch: `urls` as JSON or `files` as multipart; answers 202 at once."""
    account = account_of(request)
    if not get_plan(account.plan).batch_allowed:
        raise Forbidden("batch processing is available on the Pro and Enterprise plans")
    params, urls, uploads = await _read_batch(request)
    if params.webhook_url:
        _check_user_url("webhook_url", params.webhook_url, request)
    await _reserve(request, account, len(urls) + len(uploads))
    sources = [ImageSource(original_url=url) for url in urls]
    storage = request.app[PROCESSOR].storage
    for upload in uploads:
        # Originals wait in storage, so a gateway restarted mid-batch still has them.
        key = f"sources/{new_public_id('src', 24)}"
        await storage.put(key, upload.content, "application/octet-stream")
        sources.append(ImageSource(original_filename=upload.filename[:255] or None, source_key=key))
    options = params.options
    batch = await images.create_batch(
        request.app[SESSIONS], account.id, sources, output_format=options.output_format,
        output_size=options.output_size, bg_color=options.bg_color, webhook_url=params.webhook_url,
    )
    request.app[BATCHES].submit(account.id, batch.id)
    listed: list[dict[str, Any]] = []
    for image in batch.images:
        entry: dict[str, Any] = {"id": image.id}
        if image.original_url:
            entry["original_url"] = image.original_url
        entry["status"] = image.status
        listed.append(entry)
    return ok(batch_json(batch, listed), status=HTTPStatus.ACCEPTED)
