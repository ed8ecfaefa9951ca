"""The removal use-cases (gateway/domain/removals.py) called as any API calls them, without HTTP, on a real
gateway's parts (database, storage, inference service on the `held` test model); and handlers stay thin."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import pytest
from PIL import Image

from contract.options import OutputFormat, RemovalOptions
from gateway.domain import accounts, images, quota
from gateway.domain.images import ImageSource
from gateway.domain.removals import BatchAdmission, Removals
from gateway.errors import ApiError, NotFound
from gateway.http.appkeys import BATCHES, PROCESSOR, SESSIONS
from tests.gateway.harness import Gateway

HANDLERS = Path(__file__).resolve().parents[2] / "gateway" / "http" / "handlers"


@pytest.fixture
def gw(held_gw: Gateway) -> Gateway:
    """The use-cases' bookkeeping is under test, not ISNet's mask."""
    return held_gw


def _removals(gw: Gateway) -> Removals:
    return Removals(gw.app[PROCESSOR], gw.app[BATCHES], BatchAdmission(max_queued_images=100, retry_after_s=5))


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 10), (10, 20, 30)).save(buffer, "PNG")
    return buffer.getvalue()


async def test_submit_single_then_delete_image(gw: Gateway) -> None:
    """submit_single records, bills and processes one image and returns its answer and cut-out;
    delete_image removes the record and its stored output (a second delete finds nothing)."""
    sessions = gw.app[SESSIONS]
    account_id, _ = await gw.account("pro")
    account = await accounts.get_account(sessions, account_id)
    assert account is not None
    removals = _removals(gw)
    completed = await removals.submit_single(
        account, ImageSource(original_filename="a.png"), RemovalOptions(output_format=OutputFormat.WEBP),
        data=_png(), request_id="req-1",
    )
    assert completed.image.status == "completed" and completed.image.output_format == "webp"
    assert (completed.image.width, completed.image.height) == (12, 10)
    assert Image.open(io.BytesIO(completed.output)).format == "WEBP"
    assert await quota.usage(sessions, account_id) == 1

    stored = await images.get_image(sessions, account_id, completed.image.id)
    assert stored is not None and stored.storage_key is not None
    opened = await removals.open_output(stored)
    assert opened.size == len(completed.output)
    await opened.aclose()

    deleted = await removals.delete_image(account_id, completed.image.id)
    assert deleted is not None and deleted.id == completed.image.id
    with pytest.raises(NotFound):
        await removals.open_output(deleted)
    assert await removals.delete_image(account_id, completed.image.id) is None


async def test_submit_single_failure_leaves_nothing_and_is_not_billed(gw: Gateway) -> None:
    """Bytes that are no image: the ApiError (415) comes back, the library stays empty, the quota is given back."""
    sessions = gw.app[SESSIONS]
    account_id, _ = await gw.account("pro")
    account = await accounts.get_account(sessions, account_id)
    assert account is not None
    with pytest.raises(ApiError) as caught:
        await _removals(gw).submit_single(
            account, ImageSource(original_filename="a.txt"), RemovalOptions(), data=b"not an image",
            request_id="req-2",
        )
    assert caught.value.code == "unsupported_media_type"
    assert (await images.list_images(sessions, account_id, limit=10)).total == 0
    assert await quota.usage(sessions, account_id) == 0


async def test_submit_batch_records_and_bills_every_image(gw: Gateway) -> None:
    """submit_batch records one processing image per URL, in order, with the options, and bills them all."""
    sessions = gw.app[SESSIONS]
    account_id, _ = await gw.account("pro")
    account = await accounts.get_account(sessions, account_id)
    assert account is not None
    urls = ["http://127.0.0.1:9/a.png", "http://127.0.0.1:9/b.png"]
    batch = await _removals(gw).submit_batch(
        account, urls, RemovalOptions(bg_color="#FF0000", crop=True), webhook_url=None
    )
    assert batch.total_images == 2 and [image.original_url for image in batch.images] == urls
    assert all(image.bg_color == "#FF0000" and image.options == {"crop": True} for image in batch.images)
    assert await quota.usage(sessions, account_id) == 2


def test_handlers_never_reach_the_store() -> None:
    """No handler touches an object's storage (`.storage`) or bills (`quota.reserve_images`) itself: the
    domain's use-cases do."""
    offences = []
    for path in sorted(HANDLERS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in {"storage", "reserve_images", "put_file"}:
                offences.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert offences == []
