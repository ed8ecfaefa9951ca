"""GET /v1/models: the models the service runs, with a one-line description each and the default marked."""

from __future__ import annotations

from aiohttp import web

from gateway import schemas
from gateway.http.appkeys import MODELS
from gateway.http.handlers.envelope import ok
from gateway.http.middlewares import public


@public
async def list_models(request: web.Request) -> web.Response:
    """Public (no API key): what a client may pass as `model`, the default first, then by name; from the list
    the gateway refreshes in the background (a request never reaches the inference service or Triton)."""
    models = await request.app[MODELS].models()
    listed = schemas.ModelList(models=[
        schemas.ModelInfo(name=m.name, version=m.version, description=m.description, default=m.is_default)
        for m in models
    ])
    return ok(schemas.ModelListEnvelope(success=True, data=listed, meta=schemas.EmptyMeta()))
