"""Every parser of client text (query strings, headers, form fields, a receiver's Retry-After) is strict and
total: ASCII digits only for integers, a clear 400 (or, for Retry-After, nothing) for anything else."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from pathlib import Path
from typing import cast

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.domain import accounts
from gateway.domain.links import OutputLinks
from gateway.errors import InvalidRequest
from gateway.http.middlewares import _REQUEST_ID
from gateway.jobs.webhook_outbox import WebhookSender
from gateway.net.netguard import AddressPolicy
from gateway.net.urlfetch import FetchError, check_url, redact_url
from gateway.parsing import MAX_DIGITS, ascii_int, int_param, retry_after_seconds
from gateway.schemas import FileRequest, parse
from gateway.store.database import Sessions
from gateway.store.tables import WebhookDelivery
from tests.gateway.harness import gateway, serve
from tools.triton_launcher import free_port

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ODD_NUMBERS = ["²", "١٢", "１２", "+1", "-1", " 1", "1 ", "1_000", "0x10", "1e3", "1.0", "", "Ⅻ", "9" * 5000]
# Any text, weighted towards digit-like characters from every script.
TEXT = st.text(st.characters(codec="utf-8") | st.sampled_from("0123456789²³¹٠١٢۳߀०๑１２+-_ .eE"), max_size=30)
ASCII_DIGIT_STRING = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}")


@FAST
@given(raw=TEXT)
def test_ascii_int_accepts_only_ascii_digits(raw: str) -> None:
    """ascii_int never raises, and returns a value exactly for 1-18 ASCII digits, equal to int()'s."""
    value = ascii_int(raw)
    if ASCII_DIGIT_STRING.fullmatch(raw):
        assert value == int(raw)
    else:
        assert value is None


@pytest.mark.parametrize("raw", ODD_NUMBERS)
def test_odd_numbers_are_refused_with_a_400(raw: str) -> None:
    """Superscripts, other scripts' digits, full-width digits, signs, spaces, underscores and 5,000-digit
    strings are not integers: a 400 invalid_request naming the parameter."""
    assert ascii_int(raw) is None
    with pytest.raises(InvalidRequest) as raised:
        int_param(raw, name="page", default=1, minimum=1, maximum=1_000_000)
    assert (raised.value.status, raised.value.code) == (400, "invalid_request")
    assert raised.value.message == "page: must be an integer from 1 to 1000000"


@FAST
@given(raw=TEXT | st.none(), bounds=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)))
def test_int_param_returns_a_value_in_range_or_raises_invalid_request(
    raw: str | None, bounds: tuple[int, int]
) -> None:
    """int_param is total: the default when absent, a value within bounds, or InvalidRequest; nothing else."""
    minimum, maximum = min(bounds), max(bounds)
    try:
        value = int_param(raw, name="per_page", default=minimum, minimum=minimum, maximum=maximum)
    except InvalidRequest as error:
        assert raw is not None and error.status == 400
    else:
        assert minimum <= value <= maximum
        assert value == (minimum if raw is None else int(raw))


@FAST
@given(raw=TEXT | st.none(), seconds=st.integers(0, 10**17))
def test_retry_after_takes_delta_seconds_only(raw: str | None, seconds: int) -> None:
    """Retry-After: ASCII delta-seconds (spaces around allowed) parse; anything else, HTTP-dates included,
    is None; the parser never raises."""
    assert retry_after_seconds(f" {seconds}\t") == seconds
    assert retry_after_seconds("Wed, 21 Oct 2026 07:28:00 GMT") is None
    value = retry_after_seconds(raw)
    assert value is None or (raw is not None and value == int(raw.strip(" \t")))


@FAST
@given(retry_after=TEXT | st.none(), attempt=st.integers(1, 10_000))
def test_webhook_backoff_is_bounded_whatever_the_receiver_answers(retry_after: str | None, attempt: int) -> None:
    """A receiver's Retry-After, however odd, never makes the backoff raise or exceed max_delay_s."""
    sender = WebhookSender(AddressPolicy(), cast(Sessions, None), base_delay_s=0.5, max_delay_s=30.0)
    delay = sender._backoff_s(attempt, retry_after)
    assert 0.0 <= delay <= 30.0


@FAST
@given(name=TEXT, expires=TEXT, signature=TEXT)
def test_signed_link_verification_is_total(name: str, expires: str, signature: str) -> None:
    """Any name, expires and signature give True or False, never an exception; only real links verify."""
    links = OutputLinks(b"k" * 32, "http://127.0.0.1:1", ttl_s=60)
    assert links.verify(name, expires, signature) is False
    url = links.url_for("img_abc", "png", now=1_000.0)
    query = dict(part.split("=") for part in url.split("?")[1].split("&"))
    assert links.verify("img_abc.png", query["expires"], query["signature"], now=1_000.0) is True


@FAST
@given(fields=st.dictionaries(st.sampled_from(["output_format", "output_size", "bg_color", "webhook_url", "x"]), TEXT))
def test_form_fields_parse_to_a_model_or_a_400(fields: dict[str, str]) -> None:
    """The multipart form's text fields become RemovalParams or a 400 naming the field; nothing else."""
    try:
        params = parse(FileRequest, fields)
    except InvalidRequest as error:
        assert error.status == 400 and ":" in error.message
    else:
        assert params.output_format in ("png", "jpg", "webp") and "x" not in fields


@FAST
@given(request_id=TEXT)
def test_request_id_header_is_echoed_only_when_plain_ascii(request_id: str) -> None:
    """X-Request-Id is taken from the client only as 1-64 ASCII letters, digits, '.', '_' or '-'."""
    accepted = _REQUEST_ID.fullmatch(request_id) is not None
    assert accepted == (0 < len(request_id) <= 64 and request_id.isascii() and re.fullmatch(r"[\w.-]+", request_id, re.ASCII) is not None)


@FAST
@given(url=TEXT | st.from_regex(r"https?://[^\s]{0,40}", fullmatch=True))
def test_url_checks_and_redaction_are_total(url: str) -> None:
    """check_url refuses bad URLs with FetchError only (a 400), and redact_url never raises nor keeps what
    follows the '?'."""
    try:
        check_url(url, AddressPolicy())
    except FetchError:
        pass
    assert "s3cr3t" not in redact_url(url + "?token=s3cr3t")


async def test_odd_digits_in_query_strings_are_400_or_404_never_500(tmp_path: Path) -> None:
    """The issue's two 500s: ?page=² on the library is 400 invalid_request; a link with expires=² (or a
    non-ASCII signature) is just a link that does not verify, 404 not_found as any bad link."""
    async with gateway(inference_url=f"127.0.0.1:{free_port()}", data_dir=tmp_path) as gw:
        _account, key = await gw.account("pro")
        for query in ("page=%C2%B2", "per_page=%EF%BC%92", "page=+1", "page=1_0", "page=" + "9" * 5000):
            response = await gw.client.get(f"/v1/images?{query}", headers={"X-API-Key": key})
            assert response.status == 400, query
            assert response.headers["Content-Type"].startswith("application/json")
            body = await response.json()
            assert body["success"] is False and body["error"]["code"] == "invalid_request"
            assert body["error"]["message"].endswith("must be an integer from 1 to " + (
                "1000000" if query.startswith("page") else "100"))
        for query in ("expires=%C2%B2&signature=0", "expires=99999999999&signature=%C2%B2", "expires=&signature="):
            response = await gw.client.get(f"/v1/files/x.png?{query}")
            assert response.status == 404, query
            body = await response.json()
            assert body["error"] == {
                "code": "not_found", "message": "no file at this link, or the link has expired", "status": 404,
            }
        response = await gw.client.get("/v1/images?page=1&per_page=5", headers={"X-API-Key": key})
        assert response.status == 200
        assert (await response.json())["meta"] == {"page": 1, "per_page": 5, "total": 0, "total_pages": 1}


@pytest.mark.parametrize("retry_after", ["²", "Wed, 21 Oct 2026 07:28:00 GMT", "-1", "1.5", "99999999999999999999999"])
async def test_odd_retry_after_never_keeps_a_webhook_past_its_attempt_limit(
    sessions: Sessions, retry_after: str
) -> None:
    """A receiver answering 503 with an odd Retry-After gets exactly max_attempts POSTs; the delivery ends
    'failed' (it used to raise before the attempt was counted and retry for ever)."""
    calls: list[str] = []

    async def busy(request: web.Request) -> web.Response:
        calls.append(request.method)
        return web.Response(status=503, headers={"Retry-After": retry_after})

    account, _key = await accounts.create_account(sessions, name="odd", plan="pro")
    app = web.Application()
    app.router.add_post("/hook", busy)
    policy = AddressPolicy.from_config(allow_networks=["127.0.0.0/8"])
    sender = WebhookSender(policy, sessions, max_attempts=3, base_delay_s=0.01, max_delay_s=0.05)
    async with serve(app) as port, sender:
        delivery_id = await sender.enqueue(account.id, f"http://127.0.0.1:{port}/hook", {"n": 1})
        assert delivery_id is not None
        await asyncio.wait_for(sender.join(), 30)
    async with sessions() as session:
        row = await session.get(WebhookDelivery, delivery_id)
    assert row is not None
    assert (row.status, row.attempts, row.last_error) == ("failed", 3, "HTTP 503")
    assert calls == ["POST"] * 3
    assert json.loads(row.body) == {"n": 1} and row.delivered_at is None
    assert isinstance(row.next_attempt_at, dt.datetime)
