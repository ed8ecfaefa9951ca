"""The one route table: every public API route, registered on the application and described in the OpenAPI
document from the same entry (gateway.openapi), with examples built from the response models themselves."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from contract.options import OutputFormat, OutputSize
from gateway import schemas
from gateway.http import removebg_document
from gateway.http.handlers import docs, library, models, removal, webhook_secret
from gateway.http.middlewares import continue_when_admitted
from gateway.http.openapi import DOCS_PATH, OPENAPI_PATH, Body, Handler, Json, Operation, Reply
from gateway.http.responses import PARAMETERS, header
from gateway.schemas import dump

EXAMPLE_BASE = "https://api.example.com"
IMAGE_ID = "img_k3x9q2m7w8p4t6zb"
BATCH_ID = "batch_r5n2v8c1x7d3h9qa"
CREATED = "2025-04-24T10:30:45Z"
EXPIRES = 1745577105
SIGNATURE = "9f2c" + "0" * 56 + "b7e1"
SOURCE_URL = "https://example.com/image.jpg"
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")

_EMPTY = schemas.EmptyMeta()
_COMPLETED = schemas.Image(
    id=IMAGE_ID, original_url=SOURCE_URL,
    output_url=f"{EXAMPLE_BASE}/v1/files/{IMAGE_ID}.png?expires={EXPIRES}&signature={SIGNATURE}",
    output_size=OutputSize.ORIGINAL, output_format=OutputFormat.PNG, created_at=CREATED, status="completed", width=1024, height=768,
    size_bytes=482113, foreground=schemas.Foreground(left=212, top=64, width=590, height=704),
)
_FAILED = schemas.Image(
    id="img_bbcdef123456abcd", original_url="https://example.com/image2.jpg", output_size=OutputSize.ORIGINAL,
    output_format=OutputFormat.PNG, created_at=CREATED, status="failed", batch_id=BATCH_ID,
    error=schemas.ImageError(code="unsupported_media_type", message="the image is not JPG, PNG or WEBP"),
)
_SECRET = schemas.WebhookSecret(
    secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw0ZvcWi7XAqM=", rotated_at=None, previous_secret_expires_at=None,
)
_SINGLE_NOTE = (
    "Processed while you wait: the answer carries the finished image (or the error). Counts one image against "
    "the plan's monthly quota before any work; a failed image gives it back and leaves nothing in the library."
)
_IMAGE_ID = {"name": "image_id", "in": "path", "required": True, "schema": {"type": "string"}, "example": IMAGE_ID}
_BATCH_ID = {"name": "batch_id", "in": "path", "required": True, "schema": {"type": "string"}, "example": BATCH_ID}
_IMAGE_LINKS = {
    "GetImage": {"operationId": "getImage", "parameters": {"image_id": "$response.body#/data/id"},
                 "description": "The image, read again (a freshly signed output_url)."},
    "DeleteImage": {"operationId": "deleteImage", "parameters": {"image_id": "$response.body#/data/id"},
                    "description": "Delete the image and its file."},
}
_URL_BODY = Body("application/json", schemas.UrlRequest, {"url": SOURCE_URL, "output_format": "png"})
_REMOVAL_ERRORS = (
    "BadRequest", "NotAcceptable", "RequestTimeout", "IdempotencyInProgress", "UnsupportedMediaType",
    "UnprocessableOrKeyReused", "ServiceUnavailable", "GatewayTimeout",
)
_IDEMPOTENCY_KEY: Json = PARAMETERS["IdempotencyKey"]
_ACCEPT: Json = PARAMETERS["Accept"]
# Descriptions never contain a slash-star or star-slash (the wildcard media ranges): generators copy
# descriptions into block comments, where those would end the comment, and they mangle them.
# The single-image 200 beside the envelope: the cut-out's bytes when Accept asks for an image.
_IMAGE_ANSWER_NOTE = (
    " With `Accept: image/png` (or `image/jpeg`, `image/webp`, or any image type by the image wildcard) the body "
    "is the cut-out itself, its facts in the headers X-Image-Id, X-Width, X-Height and, where the image has a "
    "foreground box, X-Foreground-Left/Top/Width/Height; without output_format the Accept type picks the format. "
    "An Accept of any type (the full wildcard HTTP libraries send by default) keeps the JSON envelope. A replay "
    "of an Idempotency-Key's first answer carries Idempotent-Replayed: true. Generated clients type one answer "
    "per operation: the same request to this path + `/image` always answers the bytes."
)
_IMAGE_CONTENT: Json = {
    media_type: {"schema": {"type": "string", "format": "binary", "contentMediaType": media_type}}
    for media_type in IMAGE_TYPES
}
_FOREGROUND = tuple(f"X-Foreground-{side}" for side in ("Left", "Top", "Width", "Height"))
# Headers of the single-image 200: on the envelope only Vary (and a replay's mark); the facts when it is an image.
_IMAGE_HEADERS: Json = {
    **{name: header(name, required=False) for name in ("X-Image-Id", "X-Width", "X-Height", *_FOREGROUND)},
    "Content-Disposition": header("Content-Disposition", required=False),
    "Vary": header("Vary", required=True),
    "Idempotent-Replayed": header("Idempotent-Replayed", required=False),
}
# The `/image` operations' 200 is always the image: its facts are always there.
_IMAGE_ONLY_HEADERS: Json = {
    **_IMAGE_HEADERS,
    **{name: header(name, required=True) for name in ("X-Image-Id", "X-Width", "X-Height", "Content-Disposition")},
}
_IMAGE_ONLY_LINKS = {
    name: {**link, "parameters": {"image_id": "$response.header.X-Image-Id"}} for name, link in _IMAGE_LINKS.items()
}


_PUBLIC_CACHE: Json = {"description": "`public, max-age=300`: the same for everyone, kept for 5 minutes.",
                       "required": True, "schema": {"type": "string"}}


def _envelope(model: type[BaseModel], data: object, meta: object = _EMPTY) -> dict[str, Any]:
    """An example answer, validated by the model that serialises real answers."""
    return dump(model(success=True, data=data, meta=meta))


def _removal(operation_id: str, path: str, summary: str, description: str, body: Body,
             example: schemas.Image = _COMPLETED) -> Operation:
    return Operation(
        "post", path, removal.remove_from_file if body.media_type.startswith("multipart") else removal.remove_from_url,
        operation_id, "Remove background", summary, f"{description} {_SINGLE_NOTE}",
        Reply(HTTPStatus.OK, "The cut-out is ready." + _IMAGE_ANSWER_NOTE, schemas.ImageEnvelope,
              _envelope(schemas.ImageEnvelope, example), content=_IMAGE_CONTENT, headers=_IMAGE_HEADERS,
              links=_IMAGE_LINKS),
        _REMOVAL_ERRORS, (body,), (_IDEMPOTENCY_KEY, _ACCEPT), limited="RateOrQuotaLimited",
    )


def _removal_as_image(operation_id: str, path: str, summary: str, twin: str, body: Body) -> Operation:
    """The single-image operation at `path` + /image: the same request, always answered with the bytes."""
    multipart = body.media_type.startswith("multipart")
    return Operation(
        "post", f"{path}/image", removal.remove_from_file_as_image if multipart else removal.remove_from_url_as_image,
        operation_id, "Remove background", summary,
        f"The same request as POST {path} ({twin}), answered with the cut-out's bytes instead of the JSON "
        "envelope, whatever the Accept header (which picks the image type when output_format is not given). "
        f"The image record exists as for the envelope: GET /v1/images/{{image_id}} with X-Image-Id. {_SINGLE_NOTE}",
        Reply(HTTPStatus.OK, "The cut-out itself, its facts in the headers.", content=_IMAGE_CONTENT,
              headers=_IMAGE_ONLY_HEADERS, links=_IMAGE_ONLY_LINKS, output_file="cutout.png"),
        _REMOVAL_ERRORS, (body,), (_IDEMPOTENCY_KEY, PARAMETERS["ImageAccept"]), limited="RateOrQuotaLimited",
    )


_UPLOADED = schemas.Image(  # an upload has no original_url
    id=IMAGE_ID, output_url=f"{EXAMPLE_BASE}/v1/files/{IMAGE_ID}.webp?expires={EXPIRES}&signature={SIGNATURE}",
    output_size=OutputSize.ORIGINAL, output_format=OutputFormat.WEBP, created_at=CREATED, status="completed", width=1024, height=768,
    size_bytes=310544, foreground=schemas.Foreground(left=212, top=64, width=590, height=704),
)
_FILE_BODY = Body("multipart/form-data", schemas.FileUpload, {"file": b"", "output_format": "webp"})
_BATCH_URLS_BODY = Body("application/json", schemas.BatchUrlRequest,
                        {"urls": [SOURCE_URL, "https://example.com/image2.jpg"], "output_size": "medium"})
_BATCH_FILES_BODY = Body("multipart/form-data", schemas.BatchFileUpload, {"files": [b"", b""], "output_format": "jpg"})
_BATCH_NOTE = (
    "Pro and Enterprise plans only. Answers 202 at once; the images are processed in the background (poll GET "
    "/v1/batches/{batch_id}, or give webhook_url to be called once when all are done). Counts every image against "
    "the monthly quota up front; failed images are given back."
)
_BATCH_ERRORS = ("BadRequest", "Forbidden", "NotAcceptable", "RequestTimeout", "IdempotencyInProgress",
                 "IdempotencyKeyReused", "ServiceUnavailable")
_ACCEPTED = schemas.BatchAccepted(
    batch_id=BATCH_ID, total_images=2, status="processing", created_at=CREATED,
    images=[schemas.BatchImage(id=IMAGE_ID, original_url=SOURCE_URL, status="processing"),
            schemas.BatchImage(id=_FAILED.id, original_url=_FAILED.original_url, status="processing")],
)

def _batch(operation_id: str, path: str, handler: Handler, summary: str, forms: str,
           bodies: tuple[Body, ...]) -> Operation:
    return Operation(
        "post", path, handler, operation_id, "Remove background", summary, forms + _BATCH_NOTE,
        Reply(HTTPStatus.ACCEPTED, "Accepted: the batch is processing.", schemas.BatchAcceptedEnvelope,
              _envelope(schemas.BatchAcceptedEnvelope, _ACCEPTED), headers={"Vary": header("Vary", required=True)},
              links={"GetBatch": {"operationId": "getBatch", "parameters": {"batch_id": "$response.body#/data/batch_id"},
                                  "description": "The batch's progress and each image's result."}}),
        _BATCH_ERRORS, bodies, (_IDEMPOTENCY_KEY,), limited="RateOrQuotaLimited",
    )


ROUTES: tuple[Operation, ...] = (
    _removal("removeBackground", "/v1/remove-background", "Remove the background from an image URL",
             "The same as POST /v1/remove-background/url (the spec's authentication example).", _URL_BODY),
    _removal("removeBackgroundFromUrl", "/v1/remove-background/url", "Remove the background from an image URL",
             "Fetches the image (public addresses only, redirects followed and checked) and returns the cut-out.",
             _URL_BODY),
    _removal("removeBackgroundFromFile", "/v1/remove-background/file", "Remove the background from an uploaded file",
             "multipart/form-data with the image in the field `file` and the options as text fields. The answer "
             "has no original_url.",
             _FILE_BODY, _UPLOADED),
    _removal_as_image("removeBackgroundFromUrlAsImage", "/v1/remove-background/url",
                      "Remove the background from an image URL, answering the image", "JSON with `url`",
                      Body("application/json", schemas.UrlRequest, {"url": SOURCE_URL})),
    _removal_as_image("removeBackgroundFromFileAsImage", "/v1/remove-background/file",
                      "Remove the background from an uploaded file, answering the image",
                      "multipart/form-data with `file`", Body("multipart/form-data", schemas.FileUpload, {"file": b""})),
    _batch("removeBackgroundBatch", "/v1/remove-background/batch", removal.remove_batch,
           "Remove the backgrounds of many images",
           "Either JSON with `urls` or multipart/form-data with one `files` field per image (generated clients "
           "that type one body per operation: POST /v1/remove-background/batch/urls and /batch/files take one "
           "form each). ",
           (_BATCH_URLS_BODY, _BATCH_FILES_BODY)),
    _batch("removeBackgroundBatchFromUrls", "/v1/remove-background/batch/urls", removal.remove_batch_of_urls,
           "Remove the backgrounds of many images given by URL",
           "POST /v1/remove-background/batch with JSON `urls`, the only form this path takes. ",
           (_BATCH_URLS_BODY,)),
    _batch("removeBackgroundBatchFromFiles", "/v1/remove-background/batch/files", removal.remove_batch_of_files,
           "Remove the backgrounds of many uploaded files",
           "POST /v1/remove-background/batch with multipart/form-data, one `files` field per image (and the options "
           "as text fields), the only form this path takes. ",
           (_BATCH_FILES_BODY,)),
    Operation(
        "get", "/v1/batches/{batch_id}", library.get_batch, "getBatch", "Library", "Get a batch and its images",
        "Each image as it stands (completed ones with output_url), and the counts per state in meta.",
        Reply(HTTPStatus.OK, "The batch.", schemas.BatchEnvelope, _envelope(
            schemas.BatchEnvelope,
            schemas.Batch(batch_id=BATCH_ID, total_images=2, status="completed", created_at=CREATED,
                          completed_at="2025-04-24T10:30:52Z",
                          images=[_COMPLETED.model_copy(update={"batch_id": BATCH_ID}), _FAILED]),
            schemas.BatchProgressMeta(completed=1, failed=1, processing=0),
        )),
        ("NotFound",), parameters=(_BATCH_ID,),
    ),
    Operation(
        "get", "/v1/images", library.list_images, "listImages", "Library", "List your images",
        "Newest first, every status (batch images included); pagination in meta.",
        Reply(HTTPStatus.OK, "One page of images.", schemas.ImageListEnvelope, _envelope(
            schemas.ImageListEnvelope, [_COMPLETED], schemas.PaginationMeta(page=1, per_page=20, total=1, total_pages=1),
        )),
        ("BadRequest",),
        parameters=(
            {"name": "page", "in": "query", "required": False, "description": "1-based page number.",
             "schema": {"type": "integer", "minimum": 1, "maximum": 1_000_000, "default": 1}, "example": 1},
            {"name": "per_page", "in": "query", "required": False, "description": "Images per page.",
             "schema": {"type": "integer", "minimum": 1, "maximum": library.MAX_PER_PAGE, "default": 20},
             "example": 20},
        ),
    ),
    Operation(
        "get", "/v1/images/{image_id}", library.get_image, "getImage", "Library", "Get one image",
        "Another account's image is 404, like a missing one. output_url is freshly signed on every read.",
        Reply(HTTPStatus.OK, "The image.", schemas.ImageEnvelope, _envelope(schemas.ImageEnvelope, _COMPLETED),
              links={"DeleteImage": _IMAGE_LINKS["DeleteImage"]}),
        ("NotFound",), parameters=(_IMAGE_ID,),
    ),
    Operation(
        "delete", "/v1/images/{image_id}", library.delete_image, "deleteImage", "Library", "Delete an image",
        "Removes the record and the stored file; its output_url links stop working at once.",
        Reply(HTTPStatus.OK, "Deleted.", schemas.DeletedImageEnvelope, _envelope(
            schemas.DeletedImageEnvelope, schemas.DeletedImage(id=IMAGE_ID, deleted=True))),
        ("NotFound",), parameters=(_IMAGE_ID,),
    ),
    Operation(
        "get", "/v1/files/{name}", library.download, "downloadOutput", "Files", "Download a cut-out (signed link)",
        "The link an image's output_url gives: no API key, not rate limited, valid until `expires`.",
        Reply(
            HTTPStatus.OK, "The processed image.",
            # application/octet-stream: what the handler sends for a stored file of unknown type (never in
            # practice); listed first so that generators without image/* support still type the body as bytes.
            content={media: {"schema": {"type": "string", "format": "binary", "contentMediaType": media}}
                     for media in ("application/octet-stream", *IMAGE_TYPES)},
            headers={
                "Cache-Control": {"description": "How long the link's answer may be kept: private, until it expires.",
                                  "required": True, "schema": {"type": "string"}, "example": "private, max-age=3600"},
                "Content-Disposition": {**header("Content-Disposition", required=True),
                                        "example": f'inline; filename="{IMAGE_ID}.png"'},
            },
            output_file="output.bin",
        ),
        ("FileNotFound", "ServerError"),
        parameters=(
            {"name": "name", "in": "path", "required": True, "description": "{image_id}.{extension}",
             "schema": {"type": "string"}, "example": f"{IMAGE_ID}.png"},
            {"name": "expires", "in": "query", "required": True, "description": "UTC epoch seconds.",
             "schema": {"type": "integer"}, "example": EXPIRES},
            {"name": "signature", "in": "query", "required": True, "description": "HMAC-SHA256, hex.",
             "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}, "example": SIGNATURE},
        ),
        public=True,
    ),
    Operation(
        "get", "/v1/account", library.get_account, "getAccount", "Account", "Your account, plan and usage",
        "The plan's limits and the images used this UTC calendar month.",
        Reply(HTTPStatus.OK, "The account.", schemas.AccountEnvelope, _envelope(schemas.AccountEnvelope, schemas.Account(
            id="acct_m2k8x4c9v1b7n3q5", name="Example Ltd", plan="pro", requests_per_minute=60, monthly_images=500,
            images_used_this_month=42, batch_allowed=True, created_at="2025-01-02T09:00:00Z",
        ))),
    ),
    Operation(
        "get", "/v1/models", models.list_models, "listModels", "Models", "The models you can choose",
        "Public (no API key). What the `model` option accepts: each model the service runs, with a one-line "
        "description; the default (used when a request names none) comes first with default true. The gateway asks "
        "the inference service in the background (every `models_refresh_s`, 30 s by default) and answers from "
        "that list, so it follows what Triton serves within that time.",
        Reply(HTTPStatus.OK, "The models.", schemas.ModelListEnvelope, _envelope(schemas.ModelListEnvelope, schemas.ModelList(
            models=[
                schemas.ModelInfo(name="isnet", version="1", default=True,
                                  description="ISNet (DIS) general-use background removal, float16 weights: the default"),
                schemas.ModelInfo(name="isnet_int8", version="", default=False,
                                  description="loaded when a request first names it (that request waits for the load)"),
            ],
        ))),
        ("ModelsUnavailable",),
        public=True,
    ),
    Operation(
        "get", "/v1/account/webhook-secret", webhook_secret.get_webhook_secret, "getWebhookSecret", "Account",
        "Your webhook signing secret",
        "The secret that signs your webhooks. Verify a delivery with any Standard Webhooks library (headers "
        "webhook-id, webhook-timestamp, webhook-signature) or with X-RemovAI-Signature, \"v1=\" + hex HMAC-SHA256 of "
        "\"{X-RemovAI-Timestamp}.{body}\". Answered with Cache-Control: no-store.",
        Reply(HTTPStatus.OK, "The secret.", schemas.WebhookSecretEnvelope,
              _envelope(schemas.WebhookSecretEnvelope, _SECRET)),
    ),
    Operation(
        "post", "/v1/account/webhook-secret/rotate", webhook_secret.rotate_webhook_secret, "rotateWebhookSecret",
        "Account", "Rotate your webhook signing secret",
        "A new secret signs from now on. The one it replaces keeps signing beside it for webhook_secret_overlap_s "
        "(previous_secret_expires_at), so every signature header carries two signatures meanwhile and receivers can "
        "switch without rejecting a delivery, retries of earlier deliveries included. Rotating again within the "
        "window drops the oldest.",
        Reply(HTTPStatus.OK, "The new secret.", schemas.WebhookSecretEnvelope, _envelope(
            schemas.WebhookSecretEnvelope, _SECRET.model_copy(
                update={"rotated_at": CREATED, "previous_secret_expires_at": "2025-04-25T10:30:45Z"}))),
        ("NotFound",),
    ),
    Operation(
        "get", OPENAPI_PATH, docs.openapi_document, "getOpenApiDocument", "Documentation", "This OpenAPI 3.1 document",
        "Public. The document itself, not wrapped in the envelope.",
        Reply(HTTPStatus.OK, "The document.",
              content={"application/json": {"schema": {"type": "object", "required": ["openapi"]}}},
              headers={"Cache-Control": _PUBLIC_CACHE}),
        public=True,
    ),
    Operation(
        "get", DOCS_PATH, docs.docs_page, "getDocs", "Documentation", "This document as a web page",
        "Public. A static page whose own script renders this document, with each operation's curl and Python "
        "example.",
        Reply(HTTPStatus.OK, "The page.", content={"text/html": {"schema": {"type": "string"}}},
              headers={
                  "Cache-Control": _PUBLIC_CACHE,
                  "Content-Security-Policy": {
                      "description": "Scripts, styles and fetches from this origin only; nothing inline.",
                      "required": True, "schema": {"type": "string"}},
                  "Referrer-Policy": {"description": "`no-referrer`.", "required": True,
                                      "schema": {"type": "string", "const": "no-referrer"}},
              }),
        public=True,
    ),
    *removebg_document.operations(),
)


def add_routes(app: web.Application) -> None:
    """Registers every route of the table under its operationId; a GET answers HEAD too (aiohttp's add_get).
    `Expect: 100-continue` is answered by continue_when_admitted: no "100 Continue" for a request that will be
    refused 401 or 429."""
    for op in ROUTES:
        if op.method.upper() == "GET":
            app.router.add_get(op.path, op.handler, name=op.operation_id, expect_handler=continue_when_admitted)
        else:
            app.router.add_route(
                op.method.upper(), op.path, op.handler, name=op.operation_id, expect_handler=continue_when_admitted
            )
