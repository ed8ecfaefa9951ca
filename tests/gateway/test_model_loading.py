"""One model in memory by default: Triton starts with the default model only (explicit model control) and loads
another when a request first names it, through the public HTTP API (real gateway -> real inference service ->
real Triton on the real weights)."""

from __future__ import annotations

import contextlib
import io
import json
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psutil
import pytest
import pytest_asyncio
from PIL import Image

from inference_service.server import create_server
from inference_service.settings import InferenceSettings
from inference_service.triton import NOT_LOADED
from tests.conftest import MODEL_REPOSITORY
from tests.gateway.harness import Gateway, file_form, gateway
from tests.gateway.test_api import download
from tests.reference import DATA
from tests.waiting import eventually
from tools.triton_launcher import TritonServer

# A Triton of its own on the real weights, beside the session's.
pytestmark = pytest.mark.isnet

SECOND = "isnet_second"
SECOND_DESCRIPTION = "the default network under a second name, loaded on first use"
UNINSTALLED = "isnet_uninstalled"  # in the repository, its weights never installed (as isnet_int8 before `make int8`)


def _repository(root: Path) -> Path:
    """isnet, a second model that runs the same files under another name (model.py and weights linked), and a
    third with model.py but no weights."""
    config = (MODEL_REPOSITORY / "isnet" / "config.pbtxt").read_text()
    assert 'name: "isnet"' in config and 'key: "description"' in config
    for name in ("isnet", SECOND, UNINSTALLED):
        version = root / name / "1"
        version.mkdir(parents=True)
        text = config.replace('name: "isnet"', f'name: "{name}"')
        if name == SECOND:
            start = text.index('{ key: "description"')
            end = text.index("\n", start)
            text = text[:start] + f'{{ key: "description", value: {{ string_value: "{SECOND_DESCRIPTION}" }} }},' + text[end:]
        (root / name / "config.pbtxt").write_text(text)
        for file in ("model.py",) if name == UNINSTALLED else ("model.py", "model.onnx"):
            (version / file).symlink_to(MODEL_REPOSITORY / "isnet" / "1" / file)
    return root


def _index(triton: TritonServer) -> dict[str, str]:
    """Triton's repository index over HTTP: model name -> state ("" while not loaded)."""
    request = urllib.request.Request(f"{triton.http_url}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        entries: list[dict[str, Any]] = json.loads(response.read())
    return {entry["name"]: entry.get("state", "") for entry in entries}


@contextlib.asynccontextmanager
async def _lazy_stack(tmp_path: Path, **settings: Any) -> AsyncIterator[tuple[TritonServer, Gateway]]:
    """Triton loading only isnet at start, the inference service over it (with these settings), a gateway
    refreshing its model list every 0.2 s."""
    triton = TritonServer(_repository(tmp_path / "models"), tmp_path / "triton", models=("isnet",))
    triton.start()
    service = create_server(InferenceSettings(port=0, metrics_port=-1, triton_url=triton.grpc_url, **settings))
    await service.start()
    try:
        async with gateway(
            inference_url=f"127.0.0.1:{service.port}", data_dir=tmp_path / "data", models_refresh_s=0.2
        ) as gw:
            yield triton, gw
    finally:
        await service.stop()
        triton.stop()


@pytest_asyncio.fixture
async def lazy_stack(tmp_path: Path) -> AsyncIterator[tuple[TritonServer, Gateway]]:
    async with _lazy_stack(tmp_path) as stack:
        yield stack


IDLE_UNLOAD_S = 1.0


@pytest_asyncio.fixture
async def unloading_stack(tmp_path: Path) -> AsyncIterator[tuple[TritonServer, Gateway]]:
    """The same, the inference service unloading a model other than the default after IDLE_UNLOAD_S idle."""
    async with _lazy_stack(tmp_path, model_idle_unload_s=IDLE_UNLOAD_S) as stack:
        yield stack


def _stubs(triton: TritonServer) -> dict[str, int]:
    """Model name -> pid of its Python stub process (argv[1] is <repository>/<model>/<version>/model.py)."""
    assert triton.pid is not None
    stubs = {}
    for child in psutil.Process(triton.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            argv = child.cmdline()
            if "triton_python_backend_stub" in " ".join(argv) and len(argv) > 1:
                stubs[Path(argv[1]).parent.parent.name] = child.pid
    return stubs


async def _listed(gw: Gateway) -> list[tuple[str, str, bool, str]]:
    response = await gw.client.get("/v1/models")
    assert response.status == 200
    body = await response.json()
    return [(m["name"], m["version"], m["default"], m["description"]) for m in body["data"]["models"]]


async def _mask(gw: Gateway, key: str, model: str) -> tuple[dict[str, Any], npt.NDArray[np.float32]]:
    response = await gw.client.post(
        "/v1/remove-background/file", headers={"X-API-Key": key},
        data=file_form((DATA / "chelsea.jpg").read_bytes(), output_type="mask", model=model),
    )
    body = await response.json()
    assert response.status == 200, body
    status, content_type, png = await download(body["data"]["output_url"])
    assert status == 200 and content_type == "image/png"
    return body, np.asarray(Image.open(io.BytesIO(png))).astype(np.float32) / 255.0


async def test_a_second_model_loads_when_a_request_first_names_it(
    lazy_stack: tuple[TritonServer, Gateway],
) -> None:
    """At start only the default model is loaded, yet GET /v1/models lists the other (no version yet, described
    as loaded on first use); a removal naming it is answered by it (same weights: the default's mask), after
    which Triton has it loaded and the list carries its version and its own description."""
    triton, gw = lazy_stack
    assert _index(triton) == {"isnet": "READY", SECOND: "", UNINSTALLED: ""}
    listed = await _listed(gw)
    assert [(name, version, default) for name, version, default, _ in listed] == [
        ("isnet", "1", True), (SECOND, "", False), (UNINSTALLED, "", False),
    ]
    assert listed[0][3].startswith("ISNet (DIS)") and listed[1][3] == NOT_LOADED

    _, key = await gw.account("pro")
    body, second_mask = await _mask(gw, key, SECOND)
    assert body["data"]["model"] == SECOND
    assert _index(triton) == {"isnet": "READY", SECOND: "READY", UNINSTALLED: ""}
    default_body, default_mask = await _mask(gw, key, "isnet")
    assert default_body["data"]["model"] == "isnet"
    assert second_mask.shape == default_mask.shape and float(np.abs(second_mask - default_mask).mean()) < 0.005

    async def loaded_listing() -> bool:
        return (SECOND, "1", False, SECOND_DESCRIPTION) in await _listed(gw)

    await eventually(loaded_listing, 30, message=f"{SECOND} listed with its version and description")


async def test_a_model_whose_weights_are_not_installed_is_a_clear_final_error(
    lazy_stack: tuple[TritonServer, Gateway],
) -> None:
    """Naming a model whose load fails (in the repository, weights never installed) answers 503 saying the model
    is not installed, with no Retry-After (retrying cannot help) and nothing of the server's paths; asked
    again, the same; the default model keeps serving."""
    triton, gw = lazy_stack
    _, key = await gw.account("pro")
    for _ in range(2):
        response = await gw.client.post(
            "/v1/remove-background/file", headers={"X-API-Key": key},
            data=file_form((DATA / "chelsea.jpg").read_bytes(), output_type="mask", model=UNINSTALLED),
        )
        body = await response.json()
        assert response.status == 503, body
        assert "Retry-After" not in response.headers
        assert body == {"success": False, "error": {
            "code": "server_error", "status": 503,
            "message": "the requested model is not installed on this server; use another (GET /v1/models) or "
                       "ask its operator",
        }}
    assert _index(triton)[UNINSTALLED] == "UNAVAILABLE"
    body, _ = await _mask(gw, key, "isnet")
    assert body["data"]["model"] == "isnet"


async def test_a_model_idle_for_the_set_time_is_unloaded_and_loads_again_when_named(
    unloading_stack: tuple[TritonServer, Gateway],
) -> None:
    """With model_idle_unload_s set, a model loaded on first use is unloaded once no call has used it for that long:
    Triton lists it as no longer loaded and its stub process (its memory) is gone, while the default model stays
    loaded. The next request naming it loads it again and is answered by it."""
    triton, gw = unloading_stack
    _, key = await gw.account("pro")
    body, first_mask = await _mask(gw, key, SECOND)
    assert body["data"]["model"] == SECOND

    def unloaded() -> bool:
        return _index(triton)[SECOND] == "UNAVAILABLE" and set(_stubs(triton)) == {"isnet"}

    await eventually(unloaded, 60, message=f"{SECOND} unloaded after {IDLE_UNLOAD_S} s idle, its stub gone")
    assert _index(triton)["isnet"] == "READY"

    body, again_mask = await _mask(gw, key, SECOND)
    assert body["data"]["model"] == SECOND
    assert float(np.abs(again_mask - first_mask).mean()) < 0.005
