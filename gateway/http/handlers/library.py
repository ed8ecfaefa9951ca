"""The caller's image library and batches: list, read, delete; and the signed output file links."""

from __future__ import annotations

import math
from http import HTTPStatus
from typing import cast

from aiohttp import web

from gateway.domain import batches, images, quota
from gateway.domain.plans import get_plan
from gateway.errors import NotFound
from gateway.http.appkeys import POINT_READER, PROCESSOR, REQUEST_ID, SESSIONS, account_of, removals_of
from gateway.http.handlers.envelope import ok, send_stored
from gateway.http.middlewares import public
from gateway.parsing import int_param
from gateway.schemas import (
    Account,
    AccountEnvelope,
    AccountPlan,
    BatchEnvelope,
    DeletedImage,
    DeletedImageEnvelope,
    EmptyMeta,
    ImageEnvelope,
    ImageListEnvelope,
    PaginationMeta,
    batch_progress,
    batch_result,
    iso,
)

MAX_PER_PAGE = 100


def _positive_int(request: web.Request, name: str, default: int, maximum: int) -> int:
    """A 1-based query parameter: ASCII digits only (see gateway.parsing), else 400 invalid_request."""
    return int_param(request.query.get(name), name=name, default=default, minimum=1, maximum=maximum)


async def list_images(request: web.Request) -> web.Response:
    """GET /v1/images?page=1&per_page=20: newest first; pagination in meta."""
    page = _positive_int(request, "page", 1, 1_000_000)
    per_page = _positive_int(request, "per_page", 20, MAX_PER_PAGE)
    processor = request.app[PROCESSOR]
    result = await images.list_images(
        request.app[SESSIONS], account_of(request).id, limit=per_page, offset=(page - 1) * per_page
    )
    meta = PaginationMeta(
        page=page, per_page=per_page, total=result.total, total_pages=max(1, math.ceil(result.total / per_page)),
    )
    data = [processor.image_result(image) for image in result.images]
    return ok(ImageListEnvelope(success=True, data=data, meta=meta))


async def get_image(request: web.Request) -> web.Response:
    """GET /v1/images/{image_id}: another account's image is 404 like a missing one."""
    image = await images.read_image(request.app[POINT_READER], account_of(request).id, request.match_info["image_id"])
    if image is None:
        raise NotFound("no image with this id")
    return ok(ImageEnvelope(success=True, data=request.app[PROCESSOR].image_result(image), meta=EmptyMeta()))


async def delete_image(request: web.Request) -> web.Response:
    """DELETE /v1/images/{image_id}: removes the record and every stored object of it (each attempt's output, the
    waiting original)."""
    image = await removals_of(request).delete_image(account_of(request).id, request.match_info["image_id"])
    if image is None:
        raise NotFound("no image with this id")
    return ok(DeletedImageEnvelope(success=True, data=DeletedImage(id=image.id, deleted=True), meta=EmptyMeta()))


async def get_batch(request: web.Request) -> web.Response:
    """GET /v1/batches/{batch_id}: status, each image's result so far, and progress counts in meta."""
    batch = await batches.get_batch(request.app[SESSIONS], account_of(request).id, request.match_info["batch_id"])
    if batch is None:
        raise NotFound("no batch with this id")
    processor = request.app[PROCESSOR]
    data = batch_result(batch, [processor.image_result(image) for image in batch.images])
    return ok(BatchEnvelope(success=True, data=data, meta=batch_progress(batch)))


async def get_account(request: web.Request) -> web.Response:
    """GET /v1/account: the caller's plan, its limits and this month's usage."""
    account = account_of(request)
    plan = get_plan(account.plan)
    used = await quota.usage(request.app[SESSIONS], account.id)
    data = Account(
        id=account.id, name=account.name, plan=cast(AccountPlan, plan.name), requests_per_minute=plan.requests_per_minute,
        monthly_images=plan.monthly_images, images_used_this_month=used, batch_allowed=plan.batch_allowed,
        created_at=iso(account.created_at) or "",
    )
    return ok(AccountEnvelope(success=True, data=data, meta=EmptyMeta()))


@public
async def download(request: web.Request) -> web.StreamResponse:
    """GET /v1/files/{name}?expires=&signature=: the processed image behind an unexpired signed link."""
    processor = request.app[PROCESSOR]
    name = request.match_info["name"]
    if not processor.links.verify(name, request.query.get("expires", ""), request.query.get("signature", "")):
        raise NotFound("no file at this link, or the link has expired")
    image_id, _, _extension = name.partition(".")
    image = await images.get_image_by_id(request.app[SESSIONS], image_id)
    if image is None or image.storage_key is None or image.status != "completed":
        raise NotFound("no file at this link, or the link has expired")
    headers = {
        "Content-Type": image.content_type or "application/octet-stream",
        "Cache-Control": "private, max-age=3600",
        "Content-Disposition": f'inline; filename="{name}"',
        "X-Content-Type-Options": "nosniff",
    }
    # Streamed from the store (local disk or a bucket every replica shares) a chunk at a time: a big output
    # never sits whole in the gateway's memory, and any replica can serve any link.
    stored = await removals_of(request).open_output(image)
    # Prepared here, so the envelope middleware cannot add its headers afterwards: the request id goes now.
    headers["X-Request-Id"] = request[REQUEST_ID]
    response = web.StreamResponse(status=HTTPStatus.OK, headers=headers)
    response.content_length = stored.size
    await send_stored(request, response, stored, f"download of {name}")
    return response
