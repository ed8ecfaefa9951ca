"""Schemathesis fuzzes every operation of the public API from the gateway's own OpenAPI document: no answer
is a 5xx other than the documented 503, and every answer (status, headers, body) matches the document."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks
from schemathesis.core.result import Ok

from gateway.domain import accounts
from gateway.http.app import create_app
from gateway.http.appkeys import SESSIONS
from gateway.http.server import GatewayRunner
from gateway.settings import GatewaySettings
from tools.triton_launcher import free_port

# Small and bounded: about a dozen cases per operation keeps the whole run well under a minute on 2 cores.
MAX_EXAMPLES = 12
# A URL the gateway refuses before any connection (loopback is not in its allow list), so fuzzed `url`,
# `urls`, `webhook_url`, `bg_image_url` and the remove.bg drop-in's `image_url` never send traffic anywhere.
REFUSED_URL = "http://127.0.0.1:9/fuzz.png"
# Every check that judges one answer on its own. Left out: positive_data_acceptance (removals answer 503 here
# by design and fuzzed URLs are pointed at a refused address); ignored_auth (it replays the case, whose key is
# fixed here, so the replay still carries a valid key: the 401 is pinned by test_openapi and the
# generated-client test); and the stateful ones (use_after_free, ensure_resource_availability,
# object_level_authorization), which need a sequence of calls.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.missing_required_header,
    checks.unsupported_method,
    checks.allow_header_conformance,
]


@dataclass
class ThreadedGateway:
    """A real gateway on 127.0.0.1 in a thread with its own event loop, so blocking clients can call it."""

    base_url: str
    # One enterprise key per generation mode: each run stays under the plan's 300 requests a minute.
    api_keys: dict[GenerationMode, str]


@pytest.fixture(scope="module")
def fuzz_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedGateway]:
    port = free_port()
    gateway_settings = GatewaySettings(
        host="127.0.0.1", port=port, metrics_port=0, data_dir=Path(tmp_path_factory.mktemp("fuzz")),
        inference_url=f"127.0.0.1:{free_port()}",  # nothing listens: removals answer the documented 503
        inference_timeout_s=5.0, webhook_base_delay_s=0.05, retry_after_s=1,
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz gateway", daemon=True)
    thread.start()
    # The gateway's own runner: its connection protocol and production access log, as `python -m gateway`.
    runner = GatewayRunner(create_app(gateway_settings), shutdown_timeout=0.5)

    async def start() -> dict[GenerationMode, str]:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        keys = {}
        for mode in GenerationMode:
            _account, keys[mode] = await accounts.create_account(
                runner.app[SESSIONS], name=f"fuzz {mode.value}", plan="enterprise"
            )
        return keys

    try:
        keys = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=60)
        yield ThreadedGateway(f"http://127.0.0.1:{port}", keys)
    finally:
        # Bounded, but above SQLite's 30 s busy timeout, twice: a batch image the fuzzer started may still hold a
        # write when the runner is cancelled, and releasing its lease then waits for that lock (seen once in CI:
        # one release gave up after 30 s and the whole cleanup passed 60 s). Shutdown waiting on that lock is a
        # known weakness of the batch runner's close(), not what this test checks.
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=150)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


def _defuse_urls(case: Any) -> Any:
    """Point every generated URL string at REFUSED_URL (other types are left to be refused as invalid)."""
    body = case.body
    if isinstance(body, dict):
        for field in ("url", "webhook_url", "bg_image_url", "image_url"):
            if isinstance(body.get(field), str):
                body[field] = REFUSED_URL
        if isinstance(body.get("urls"), list):
            body["urls"] = [REFUSED_URL if isinstance(url, str) else url for url in body["urls"]]
    return case


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda mode: mode.value)
def test_public_api_conforms_to_its_openapi_document(fuzz_gateway: ThreadedGateway, mode: GenerationMode) -> None:
    """Every documented operation, fuzzed with inputs that fit the document (positive) and inputs that do
    not (negative), answers without a 5xx other than the documented 503 (no inference behind this gateway)
    and as its OpenAPI document says; negative inputs are refused."""
    document = requests.get(f"{fuzz_gateway.base_url}/v1/openapi.json", timeout=30)
    assert document.status_code == 200
    assert document.headers["Content-Type"].startswith("application/json")
    schema = schemathesis.openapi.from_dict(document.json())
    # Unknown query parameters and headers are ignored, as HTTP APIs commonly do; the document does not
    # close them, so sending them is not "negative" data.
    schema.config.generation.update(allow_extra_parameters=False)
    results = list(schema.get_all_operations())
    assert all(isinstance(result, Ok) for result in results), results
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) >= 10
    headers = {"X-API-Key": fuzz_gateway.api_keys[mode]}
    mode_checks = [*CHECKS, checks.negative_data_rejection] if mode is GenerationMode.NEGATIVE else CHECKS
    without_negative: set[str] = set()
    with requests.Session() as session:
        for operation in operations:
            if mode is GenerationMode.NEGATIVE and not (list(operation.query) or list(operation.body)):
                # Unconstrained path strings and no query or body: nothing can be made invalid, and Hypothesis
                # would spend half a minute finding that out.
                without_negative.add(operation.label)
                continue

            @settings(
                max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
            )
            # The key is fixed, not generated (nor mutated): a fuzzed key only ever tests the 401.
            @given(case=operation.as_strategy(mode, headers=headers).map(_defuse_urls))
            def fuzz(case: Any) -> None:
                response = case.call(base_url=fuzz_gateway.base_url, session=session, timeout=30)
                # Removals and the model list ask the inference service: they answer 503 here by design
                # (documented, with Retry-After); checked just below.
                path = case.operation.path
                needs_inference = path.startswith("/v1/remove-background") or path == "/v1/models"
                case.validate_response(response, checks=mode_checks[1:] if needs_inference else mode_checks)
                if response.status_code >= 500:
                    assert response.status_code == 503 and needs_inference
                    assert response.headers.get("retry-after") == ["1"], response.headers

            try:
                fuzz()
            except Unsatisfiable:
                # Nothing of this operation can be made invalid (no parameters or body once the key is
                # fixed): there is no negative case to send.
                assert mode is GenerationMode.NEGATIVE, operation.label
                without_negative.add(operation.label)
    if mode is GenerationMode.NEGATIVE:
        assert {"GET /v1/images", "POST /v1/remove-background/url", "POST /v1/remove-background/batch"}.isdisjoint(
            without_negative
        )
