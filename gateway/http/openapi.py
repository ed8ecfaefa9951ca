"""The public API's OpenAPI 3.1 document: paths from the route table (gateway.routes), schemas from the pydantic
models that serialise the answers (gateway.schemas, gateway.errors), error responses described once."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from gateway import errors
from gateway.domain.plans import PLANS
from gateway.http.responses import ERRORS, HEADERS, PARAMETERS, error_response, error_status, headers
from gateway.http.samples import code_samples
from gateway.settings import MIB, GatewaySettings

Json = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OPENAPI_PATH = "/v1/openapi.json"
DOCS_PATH = "/v1/docs"
# The docs page (gateway/static/docs.*) renders the document with its own script: nothing inline, nothing
# from another origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class Body:
    """One media type a request body may take."""

    media_type: str
    model: type[BaseModel]
    example: Json


@dataclass(frozen=True)
class Reply:
    """The success response: a model's JSON envelope, or raw content (files, the document, the page)."""

    status: HTTPStatus
    description: str
    model: type[BaseModel] | None = None
    example: Json | None = None
    content: Json | None = None
    headers: Json = field(default_factory=dict)
    links: Json = field(default_factory=dict)
    # Where the code samples save a binary answer (None: they print the JSON envelope or the content type).
    output_file: str | None = None


@dataclass(frozen=True)
class Operation:
    """One route: registered on the application and described in the document from the same entry."""

    method: str
    path: str
    handler: Handler
    operation_id: str
    tag: str
    summary: str
    description: str
    reply: Reply
    errors: tuple[str, ...] = ()
    bodies: tuple[Body, ...] = ()
    parameters: tuple[Json, ...] = ()
    public: bool = False
    # Authenticated operations' 429: rate limit only, or rate limit and monthly quota.
    limited: str = "RateLimited"
    # Another API's vocabulary (the remove.bg drop-in): its own error responses, status -> (the name it has in
    # components/responses, the response), instead of the spec's shared ones.
    own_errors: dict[str, tuple[str, Json]] | None = None
    # The success answer's body is a file by default (the samples save it to output.bin).
    binary_answer: bool = False


# --- Schemas ------------------------------------------------------------------------------------------------


class _Generator(GenerateJsonSchema):
    """Pydantic's schemas without per-field titles (they only repeat the name) or null defaults."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def _without_null_defaults(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: _without_null_defaults(value) for key, value in node.items()
                if not (key == "default" and value is None)}
    if isinstance(node, list):
        return [_without_null_defaults(value) for value in node]
    return node


def _form(schema: Json) -> Json:
    """A multipart form's text fields are never null: the JSON bodies' `anyOf [X, null]` becomes X."""
    for name, prop in schema["properties"].items():
        choices = [choice for choice in prop.pop("anyOf", []) if choice.get("type") != "null"]
        schema["properties"][name] = {**choices[0], **prop} if choices else prop
    return schema


def _schemas(routes: tuple[Operation, ...], settings: GatewaySettings) -> Json:
    models = {body.model for op in routes for body in op.bodies} | {errors.ErrorEnvelope}
    models |= {op.reply.model for op in routes if op.reply.model is not None}
    modes = [(model, "validation" if model in {b.model for op in routes for b in op.bodies} else "serialization")
             for model in sorted(models, key=lambda model: model.__name__)]
    _, generated = models_json_schema(
        modes, ref_template="#/components/schemas/{model}", schema_generator=_Generator,  # type: ignore[arg-type]
    )
    schemas: Json = _without_null_defaults(dict(sorted(generated["$defs"].items())))
    for name in {op_body.model.__name__ for op in routes for op_body in op.bodies
                 if op_body.media_type == "multipart/form-data"}:
        _form(schemas[name])
    # Limits that are settings, not constants.
    schemas["BatchUrlRequest"]["properties"]["urls"]["maxItems"] = settings.max_batch_images
    schemas["BatchFileUpload"]["properties"]["files"]["maxItems"] = settings.max_batch_images
    for name, key in (("FileUpload", "file"), ("BatchFileUpload", "files")):
        schemas[name]["properties"][key]["description"] += f" At most {settings.max_upload_bytes // MIB} MB each."
    return schemas


# --- Paths and the document --------------------------------------------------------------------------------


def _responses(op: Operation) -> Json:
    reply = op.reply
    success: Json = {"description": reply.description, "headers": {**headers(rate=not op.public), **reply.headers}}
    if reply.model is not None:
        media: Json = {"schema": {"$ref": f"#/components/schemas/{reply.model.__name__}"}}
        if reply.example is not None:
            media["example"] = reply.example
        success["content"] = {"application/json": media}
        if reply.content:  # other media types beside the envelope (the image answer's bytes)
            success["content"].update(reply.content)
    else:
        success["content"] = reply.content
    if reply.links:
        success["links"] = reply.links
    if op.own_errors is not None:
        own = {status: {"$ref": f"#/components/responses/{name}"} for status, (name, _) in op.own_errors.items()}
        return dict(sorted({str(int(reply.status)): success, **own}.items()))
    # Any authenticated request may meet 403: the operator can disable an account (its keys still identify it).
    names = [*op.errors, *(() if op.public else ("Unauthorized", "Forbidden", op.limited, "ServerError"))]
    # Every authenticated request reads the database (and Redis, with replicas), so each can meet a store
    # outage; where the operation documents inference's 503 already, that entry names both causes.
    if not op.public and not any(error_status(name) == "503" for name in names):
        names.append("StoreUnavailable")
    shared = {error_status(name): {"$ref": f"#/components/responses/{name}"} for name in names}
    return dict(sorted({str(int(reply.status)): success, **shared}.items()))


def _operation(op: Operation, settings: GatewaySettings) -> Json:
    described: Json = {
        "operationId": op.operation_id, "tags": [op.tag], "summary": op.summary, "description": op.description,
        "parameters": [{"$ref": "#/components/parameters/RequestId"}, *op.parameters],
    }
    if op.bodies:
        content: Json = {}
        for body in op.bodies:
            content[body.media_type] = {"schema": {"$ref": f"#/components/schemas/{body.model.__name__}"}}
            if body.media_type == "multipart/form-data":
                binary = [name for name, value in body.example.items() if isinstance(value, list | bytes)]
                content[body.media_type]["encoding"] = {name: {"contentType": "image/png, image/jpeg, image/webp"}
                                                        for name in binary}
            else:
                content[body.media_type]["example"] = body.example
        described["requestBody"] = {"required": True, "content": content}
    if op.public:
        described["security"] = []
    described["responses"] = _responses(op)
    described["x-codeSamples"] = code_samples(op, settings.base_url)
    return described


def _description(settings: GatewaySettings) -> str:
    plans = "\n".join(
        f"- {plan.name}: {plan.requests_per_minute} requests per minute, "
        + (f"{plan.monthly_images} images per month" if plan.monthly_images is not None else "unlimited images")
        + ("" if plan.batch_allowed else ", no batch")
        for plan in PLANS.values()
    )
    return (
        "Remove the background from images given by URL or uploaded as files, one at a time or in batches, "
        "and manage the resulting image library. Try it in the browser on the page at / (the try-it page).\n\n"
        "Authentication: send your API key in the `X-API-Key` header. Keys are issued by the operator of this "
        "gateway (`removai-admin accounts create --name NAME --plan PLAN`; a local `make run` prints a demo key). Only the "
        "signed file links and this documentation are public.\n\n"
        "Successful answers are `{\"success\": true, \"data\": ..., \"meta\": {...}}`; errors are "
        "`{\"success\": false, \"error\": {\"code\", \"message\", \"status\"}}`.\n\n"
        "Every answer carries `X-Request-Id`. Every answer to an authenticated request carries `X-RateLimit-Limit`, "
        "`X-RateLimit-Remaining` and `X-RateLimit-Reset`; 429 and 503 carry `Retry-After`.\n\n"
        f"Plans:\n{plans}\n\n"
        f"Signed output_url links stay valid for {settings.output_url_ttl_s} s. Any path not listed here answers "
        "404 not_found, and any method a listed path does not serve answers 405 (components/responses "
        "RouteNotFound and MethodNotAllowed)."
    )


def build_document(routes: tuple[Operation, ...], settings: GatewaySettings) -> Json:
    """The whole OpenAPI 3.1 document for these routes on a gateway with these settings."""
    paths: Json = {}
    for op in routes:
        paths.setdefault(op.path, {})[op.method] = _operation(op, settings)
    return {
        "openapi": "3.1.0",
        "info": {"title": "RemovAI API", "version": "1.0.0", "summary": "Image background removal.",
                 "description": _description(settings)},
        "externalDocs": {"description": "Try-it page", "url": f"{settings.base_url}/"},
        "servers": [{"url": settings.base_url, "description": "This gateway"}],
        "security": [{"ApiKeyAuth": []}],
        "tags": [{"name": name, "description": text} for name, text in (
            ("Remove background", "Process images."), ("Library", "Your images and batches."),
            ("Account", "Your plan and usage."), ("Files", "Signed links to processed images."),
            ("Documentation", "This document."),
            ("remove.bg compatible", (
             "A drop-in for remove.bg's API: code written against it works by changing its base URL to this "
             "gateway's. Same accounts, API keys (X-Api-Key), plans, quotas, rate limits and Idempotency-Key as /v1; "
             "answers and errors in remove.bg's shape. Credits are our images: a preview (size preview, small or "
             "regular) costs 0.25, every other size 1. Results are kept in the image library (X-Image-Id).")))],
        "paths": paths,
        "components": {
            "securitySchemes": {"ApiKeyAuth": {
                "type": "apiKey", "in": "header", "name": "X-API-Key",
                "description": ("Your API key; a missing, unknown or rotated-out key is 401 invalid_api_key; a key of an account the operator disabled is 403 forbidden."),
            }},
            "parameters": {"RequestId": {
                "name": "X-Request-Id", "in": "header", "required": False,
                "description": HEADERS["X-Request-Id"][0], "schema": {"type": "string"},
            }, **PARAMETERS},
            "schemas": _schemas(routes, settings),
            "responses": {
                **{name: error_response(name) for name in ERRORS},
                **{name: response for op in routes for name, response in (op.own_errors or {}).values()},
            },
        },
    }


def document_bytes(routes: tuple[Operation, ...], settings: GatewaySettings) -> bytes:
    return json.dumps(build_document(routes, settings), indent=2).encode()
