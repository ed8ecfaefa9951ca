"""The OpenAPI document: it lists exactly the served API routes, is valid OpenAPI 3.1, and real answers match it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway.domain import quota
from gateway.http.appkeys import SESSIONS
from tests.gateway.harness import Gateway, ImageHost
from tests.reference import DATA
from tests.waiting import eventually

DOCUMENT_URI = "urn:removai:openapi"
# The public API is everything under /v1/. Not documented here, by decision: the try-it page ("/") and its
# assets ("/static/..."), and the operators' /healthz, which is not part of the customer API (Prometheus'
# /metrics is not on this port at all).
API_PREFIX = ("/v1/", "/v1.0/")  # our API and the remove.bg drop-in
# Headers the document promises; each one a response carries must be documented for that response.
API_HEADERS = ("X-Request-Id", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After")
# Besides those, every X- header and these, when an answer carries them, are declared for that answer (so a
# generated client knows them), with a schema the value meets.
DECLARED_HEADERS = ("Retry-After", "Idempotent-Replayed", "Content-Disposition", "Allow", "Vary", "Cache-Control")


@pytest.fixture
def gw(held_gw: Gateway) -> Gateway:
    """The document and the shapes of the answers do not depend on ISNet's masks: the `held` test model serves."""
    return held_gw


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


class Contract:
    """Finds a documented response by (path template, method, status) and validates a real answer against it,
    with jsonschema Draft 2020-12 (the dialect of OpenAPI 3.1) over the document's resolved $refs."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.registry: Registry[Any] = Registry().with_resource(
            DOCUMENT_URI, Resource.from_contents(document, default_specification=DRAFT202012)
        )

    def at(self, pointer: str) -> Any:
        node: Any = self.document
        for token in pointer.lstrip("/").split("/"):
            node = node[token.replace("~1", "/").replace("~0", "~")]
        return node

    def follow(self, pointer: str) -> str:
        """The pointer of the object itself, following $refs."""
        while "$ref" in self.at(pointer):
            pointer = self.at(pointer)["$ref"].removeprefix("#")
        return pointer

    def validator(self, pointer: str) -> Draft202012Validator:
        return Draft202012Validator(
            {"$ref": f"{DOCUMENT_URI}#{pointer}"}, registry=self.registry,
            format_checker=Draft202012Validator.FORMAT_CHECKER,
        )

    def response_pointer(self, path: str, method: str, status: int) -> str:
        responses = f"/paths/{_escape(path)}/{method.lower()}/responses"
        documented = self.at(responses)
        assert str(status) in documented, f"{method} {path} answered {status}; documented: {sorted(documented)}"
        return self.follow(f"{responses}/{status}")

    async def check(
        self, response: aiohttp.ClientResponse, path: str, method: str, *, pointer: str | None = None
    ) -> Any:
        """Status, headers and body of a real answer against the document; returns the parsed body."""
        pointer = pointer or self.response_pointer(path, method, response.status)
        spec = self.at(pointer)
        headers = spec.get("headers", {})
        for name in API_HEADERS:
            documented = headers.get(name)
            if name not in response.headers:
                assert not (documented and documented.get("required")), f"{response.status} lacks {name}"
                continue
            assert documented is not None, f"{method} {path} {response.status}: {name} is not documented"
            raw = response.headers[name]
            value: Any = int(raw) if documented["schema"].get("type") == "integer" else raw
            self.validator(f"{pointer}/headers/{_escape(name)}/schema").validate(value)
        declared = {name.lower(): name for name in headers}
        for name in {name for name in response.headers if name.upper().startswith("X-")} | set(DECLARED_HEADERS):
            if name not in response.headers:
                continue
            documented_name = declared.get(name.lower())
            assert documented_name is not None, f"{method} {path} {response.status}: {name} is not declared"
            raw = response.headers[name]
            schema = headers[documented_name]["schema"]
            value = int(raw) if schema.get("type") == "integer" else raw
            self.validator(f"{pointer}/headers/{_escape(documented_name)}/schema").validate(value)
        content = spec.get("content", {})
        assert response.content_type in content, f"{response.content_type} not in {sorted(content)}"
        if response.content_type != "application/json":
            return await response.read()
        body = await response.json()
        self.validator(f"{pointer}/content/{_escape(response.content_type)}/schema").validate(body)
        return body


async def fetch_contract(gw: Gateway) -> Contract:
    response = await gw.client.get("/v1/openapi.json")
    assert response.status == 200
    return Contract(await response.json())


def api_routes(app: web.Application) -> set[tuple[str, str]]:
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if route.method == "HEAD" or not path or not path.startswith(API_PREFIX):
            continue
        routes.add((route.method.lower(), path))
    return routes


async def test_every_api_route_is_documented_and_every_documented_path_is_served(gw: Gateway) -> None:
    """The document's (method, path) pairs are exactly the app's routes under /v1/ (HEAD and non-API left out)."""
    contract = await fetch_contract(gw)
    documented = {
        (method, path) for path, item in contract.document["paths"].items() for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }
    served = api_routes(gw.app)
    assert ("post", "/v1/remove-background/url") in served and ("get", "/v1/docs") in served
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"


async def test_document_is_valid_openapi_3_1_and_public(gw: Gateway) -> None:
    """GET /v1/openapi.json needs no key and returns a valid 3.1 document for this server; its examples validate."""
    response = await gw.client.get("/v1/openapi.json")
    assert response.status == 200 and response.content_type == "application/json"
    assert response.headers["X-Request-Id"] and "X-RateLimit-Limit" not in response.headers
    document = await response.json()
    validate_openapi(document)
    assert document["openapi"] == "3.1.0"
    assert document["servers"] == [{"url": gw.settings.base_url, "description": "This gateway"}]
    assert document["components"]["securitySchemes"]["ApiKeyAuth"] == {
        "type": "apiKey", "in": "header", "name": "X-API-Key",
        "description": document["components"]["securitySchemes"]["ApiKeyAuth"]["description"],
    }
    assert document["security"] == [{"ApiKeyAuth": []}]
    schemas = document["components"]["schemas"]
    for name in ("Image", "Batch", "BatchImage", "Account", "ErrorEnvelope", "ImageEnvelope", "ImageListEnvelope",
                 "BatchEnvelope", "BatchAcceptedEnvelope", "AccountEnvelope", "DeletedImageEnvelope",
                 "WebhookSecretEnvelope", "UrlRequest", "BatchUrlRequest", "FileUpload", "BatchFileUpload",
                 "PaginationMeta", "BatchProgressMeta"):
        assert name in schemas, name
    assert "quota_exceeded" in schemas["ErrorBody"]["properties"]["code"]["enum"]
    batch = document["paths"]["/v1/remove-background/batch"]["post"]["responses"]
    assert "202" in batch and "200" not in batch
    removal = document["paths"]["/v1/remove-background/url"]["post"]["responses"]
    assert {"400", "401", "415", "422", "429", "500", "503", "504"} <= set(removal)
    assert {"MethodNotAllowed", "RouteNotFound"} <= set(document["components"]["responses"])
    public = {path for path, item in document["paths"].items() for op in item.values() if op.get("security") == []}
    assert public == {"/v1/files/{name}", "/v1/openapi.json", "/v1/docs", "/v1/models"}

    contract = Contract(document)
    checked = 0
    for path, item in document["paths"].items():
        for method, operation in item.items():
            media = [(f"/paths/{_escape(path)}/{method}/requestBody", operation.get("requestBody"))]
            for status in operation["responses"]:
                pointer = contract.follow(f"/paths/{_escape(path)}/{method}/responses/{status}")
                media.append((pointer, contract.at(pointer)))
            for pointer, spec in media:
                for media_type, content in (spec or {}).get("content", {}).items():
                    if "example" in content:
                        contract.validator(f"{pointer}/content/{_escape(media_type)}/schema").validate(
                            content["example"]
                        )
                        checked += 1
    assert checked >= 25


async def test_single_image_and_library_answers_match_the_document(gw: Gateway, image_host: ImageHost) -> None:
    """A real URL removal, the library reads, the signed download, a delete and the account all validate."""
    contract = await fetch_contract(gw)
    _, key = await gw.account("pro")
    auth = {"X-API-Key": key}
    url = image_host.url("/photos/astronaut.jpg")
    response = await gw.client.post(
        "/v1/remove-background/url", json={"url": url, "output_format": "png", "bg_color": "#00ff00"}, headers=auth
    )
    assert response.status == 200
    image = (await contract.check(response, "/v1/remove-background/url", "POST"))["data"]
    assert image["status"] == "completed" and image["original_url"] == url and image["bg_color"] == "#00FF00"

    listed = await contract.check(await gw.client.get("/v1/images", headers=auth), "/v1/images", "GET")
    assert [i["id"] for i in listed["data"]] == [image["id"]] and listed["meta"]["total"] == 1
    one = await gw.client.get(f"/v1/images/{image['id']}", headers=auth)
    assert (await contract.check(one, "/v1/images/{image_id}", "GET"))["data"]["id"] == image["id"]

    path = image["output_url"].removeprefix(gw.settings.base_url)
    downloaded = await gw.client.get(path)
    assert downloaded.status == 200 and downloaded.content_type == "image/png"
    assert (await contract.check(downloaded, "/v1/files/{name}", "GET"))[:8] == b"\x89PNG\r\n\x1a\n"
    tampered = await gw.client.get(path[:-1] + ("0" if path[-1] != "0" else "1"))
    assert tampered.status == 404
    assert (await contract.check(tampered, "/v1/files/{name}", "GET"))["error"]["code"] == "not_found"

    account = await contract.check(await gw.client.get("/v1/account", headers=auth), "/v1/account", "GET")
    assert account["data"]["plan"] == "pro" and account["data"]["images_used_this_month"] == 1

    deleted = await gw.client.delete(f"/v1/images/{image['id']}", headers=auth)
    assert (await contract.check(deleted, "/v1/images/{image_id}", "DELETE"))["data"] == {
        "id": image["id"], "deleted": True,
    }
    missing = await gw.client.get(f"/v1/images/{image['id']}", headers=auth)
    assert missing.status == 404
    assert (await contract.check(missing, "/v1/images/{image_id}", "GET"))["error"]["code"] == "not_found"


async def test_error_answers_match_the_document(gw: Gateway) -> None:
    """401, 400, 403, 404 (route), 405, 429 rate_limit_exceeded and 429 quota_exceeded validate, headers too."""
    contract = await fetch_contract(gw)
    responses = contract.document["components"]["responses"]
    assert responses  # the route-level answers below are checked against these components

    no_key = await gw.client.post("/v1/remove-background/url", json={"url": "http://x.test/a.jpg"})
    assert no_key.status == 401 and "X-RateLimit-Limit" not in no_key.headers
    assert (await contract.check(no_key, "/v1/remove-background/url", "POST"))["error"]["code"] == "invalid_api_key"

    account_id, key = await gw.account("basic")
    auth = {"X-API-Key": key}
    bad = await gw.client.get("/v1/images?per_page=0", headers=auth)
    assert bad.status == 400
    assert (await contract.check(bad, "/v1/images", "GET"))["error"]["code"] == "invalid_request"

    forbidden = await gw.client.post("/v1/remove-background/batch", json={"urls": ["http://x.test/a.jpg"]},
                                     headers=auth)
    assert forbidden.status == 403
    assert (await contract.check(forbidden, "/v1/remove-background/batch", "POST"))["error"]["code"] == "forbidden"

    assert await quota.reserve_images(gw.app[SESSIONS], account_id, 50, 50)
    form = aiohttp.FormData()
    form.add_field("file", (DATA / "chelsea.jpg").read_bytes(), filename="chelsea.jpg", content_type="image/jpeg")
    used_up = await gw.client.post("/v1/remove-background/file", data=form, headers=auth)
    assert used_up.status == 429 and int(used_up.headers["Retry-After"]) > 0
    body = await contract.check(used_up, "/v1/remove-background/file", "POST")
    assert body["error"] == {"code": "quota_exceeded", "message": body["error"]["message"], "status": 429}

    unknown = await gw.client.get("/v1/nope", headers=auth)
    assert unknown.status == 404
    await contract.check(unknown, "/v1/nope", "GET", pointer="/components/responses/RouteNotFound")
    wrong_method = await gw.client.get("/v1/remove-background/url", headers=auth)
    assert wrong_method.status == 405 and "POST" in wrong_method.headers["Allow"]
    await contract.check(wrong_method, "/v1/remove-background/url", "GET", pointer="/components/responses/MethodNotAllowed")

    _, limited_key = await gw.account("basic", name="limited")
    for _ in range(10):
        allowed = await gw.client.get("/v1/account", headers={"X-API-Key": limited_key})
        assert allowed.status == 200
    limited = await gw.client.get("/v1/account", headers={"X-API-Key": limited_key})
    assert limited.status == 429 and limited.headers["X-RateLimit-Remaining"] == "0"
    body = await contract.check(limited, "/v1/account", "GET")
    assert body["error"]["code"] == "rate_limit_exceeded" and 1 <= int(limited.headers["Retry-After"]) <= 60


async def test_batch_answers_match_the_document(gw: Gateway, image_host: ImageHost) -> None:
    """The 202 of a URL batch and GET /v1/batches/{id}, while processing and when done (one image fails), validate."""
    contract = await fetch_contract(gw)
    _, key = await gw.account("pro")
    auth = {"X-API-Key": key}
    urls = [image_host.url("/photos/coffee.jpg"), image_host.url("/text")]
    accepted = await gw.client.post("/v1/remove-background/batch", json={"urls": urls}, headers=auth)
    assert accepted.status == 202
    batch = (await contract.check(accepted, "/v1/remove-background/batch", "POST"))["data"]
    assert batch["total_images"] == 2 and [i["original_url"] for i in batch["images"]] == urls

    async def completed() -> dict[str, Any] | None:
        response = await gw.client.get(f"/v1/batches/{batch['batch_id']}", headers=auth)
        assert response.status == 200
        checked: dict[str, Any] = await contract.check(response, "/v1/batches/{batch_id}", "GET")
        return checked if checked["data"]["status"] == "completed" else None

    body = await eventually(completed, 240, message="batch completed", interval_s=0.5)
    assert body["data"]["status"] == "completed" and "completed_at" in body["data"]
    assert body["meta"] == {"completed": 1, "failed": 1, "processing": 0}
    assert [i["status"] for i in body["data"]["images"]] == ["completed", "failed"]

    unknown = await gw.client.get("/v1/batches/batch_doesnotexist0", headers=auth)
    assert unknown.status == 404
    await contract.check(unknown, "/v1/batches/{batch_id}", "GET")


@pytest.mark.parametrize("path", ["/v1/openapi.json", "/v1/docs"])
async def test_docs_routes_are_public_even_with_a_wrong_key(gw: Gateway, path: str) -> None:
    """A wrong X-API-Key does not matter on the public documentation routes."""
    response = await gw.client.get(path, headers={"X-API-Key": "rmv_wrong"})
    assert response.status == 200 and "X-RateLimit-Limit" not in response.headers


def _walk(node: Any) -> Iterator[Any]:
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from _walk(child)


async def test_document_is_written_for_client_generators(gw: Gateway) -> None:
    """What generated clients need: no allOf anywhere, uploads are format binary (and never empty), every JSON
    success answer is a named envelope schema, errors are shared responses, the download's 200 is binary,
    and the links lead from a batch and an image to the operations that read them."""
    document = (await fetch_contract(gw)).document
    assert not any(isinstance(node, dict) and "allOf" in node for node in _walk(document))
    schemas = document["components"]["schemas"]
    assert schemas["FileUpload"]["properties"]["file"] == {
        **schemas["FileUpload"]["properties"]["file"], "type": "string", "format": "binary", "minLength": 1,
    }
    assert schemas["BatchFileUpload"]["properties"]["files"]["items"]["format"] == "binary"
    for path, item in document["paths"].items():
        for operation in item.values():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    assert set(response) == {"$ref"}, (path, status)
                elif "application/json" in response["content"] and path.startswith("/v1/") and "openapi" not in path:
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("Envelope"), (path, ref)
            for body in operation.get("requestBody", {}).get("content", {}).values():
                assert "example" not in body or "file" not in body["example"], path
    download = document["paths"]["/v1/files/{name}"]["get"]["responses"]["200"]["content"]
    assert all(media["schema"]["format"] == "binary" for media in download.values())
    # A description ends up in generated block comments: a slash-star or star-slash would end or mangle them.
    for node in _walk(document):
        if isinstance(node, dict) and isinstance(node.get("description"), str):
            assert "/*" not in node["description"] and "*/" not in node["description"], node["description"]
    # Generators that type one request and one response media type per operation reach every form through an
    # operation of its own.
    for path, media in (("/v1/remove-background/batch/urls", "application/json"),
                        ("/v1/remove-background/batch/files", "multipart/form-data"),
                        ("/v1/remove-background/url/image", "application/json"),
                        ("/v1/remove-background/file/image", "multipart/form-data")):
        operation = document["paths"][path]["post"]
        assert list(operation["requestBody"]["content"]) == [media], path
        if path.endswith("/image"):
            success = operation["responses"]["200"]
            assert list(success["content"]) == ["image/png", "image/jpeg", "image/webp"], path
            assert all(media["schema"]["format"] == "binary" for media in success["content"].values())
            assert {name for name, header in success["headers"].items() if header["required"]} >= {
                "X-Image-Id", "X-Width", "X-Height", "Content-Disposition"}
            assert {"X-Foreground-Left", "X-Foreground-Top", "X-Foreground-Width", "X-Foreground-Height"} <= set(
                success["headers"])
    links = document["paths"]["/v1/remove-background/batch"]["post"]["responses"]["202"]["links"]
    assert links["GetBatch"]["parameters"] == {"batch_id": "$response.body#/data/batch_id"}
    image_links = document["paths"]["/v1/remove-background/url"]["post"]["responses"]["200"]["links"]
    assert {link["operationId"] for link in image_links.values()} == {"getImage", "deleteImage"}


async def test_single_form_and_image_operations_answer_as_documented(gw: Gateway, image_host: ImageHost) -> None:
    """The `/image` operations answer the cut-out's bytes with their facts in declared headers (the Accept header
    picks the type; one that admits no image is 406); the negotiating operation's image answer declares the same
    headers; /batch/urls and /batch/files take their one form and refuse the other with a 400 naming it."""
    contract = await fetch_contract(gw)
    _, key = await gw.account("pro")
    auth = {"X-API-Key": key}
    photo = (DATA / "chelsea.jpg").read_bytes()

    def form(field: str = "file", count: int = 1) -> aiohttp.FormData:
        data = aiohttp.FormData()
        for _ in range(count):
            data.add_field(field, photo, filename="chelsea.jpg", content_type="image/jpeg")
        return data

    as_image = await gw.client.post("/v1/remove-background/file/image", data=form(), headers=auth)
    assert as_image.status == 200 and as_image.content_type == "image/png"
    assert (await contract.check(as_image, "/v1/remove-background/file/image", "POST"))[:8] == b"\x89PNG\r\n\x1a\n"
    assert as_image.headers["X-Width"] == "451" and as_image.headers["X-Foreground-Width"] == "451"
    assert as_image.headers["Content-Disposition"] == f'inline; filename="{as_image.headers["X-Image-Id"]}.png"'
    record = await gw.client.get(f"/v1/images/{as_image.headers['X-Image-Id']}", headers=auth)
    assert record.status == 200 and (await record.json())["data"]["output_format"] == "png"

    url = image_host.url("/photos/astronaut.jpg")
    webp = await gw.client.post("/v1/remove-background/url/image", json={"url": url},
                                headers={**auth, "Accept": "image/webp"})
    assert webp.status == 200 and webp.content_type == "image/webp"
    assert (await contract.check(webp, "/v1/remove-background/url/image", "POST"))[8:12] == b"WEBP"
    refused = await gw.client.post("/v1/remove-background/url/image", json={"url": url},
                                   headers={**auth, "Accept": "application/json"})
    assert refused.status == 406
    assert (await contract.check(refused, "/v1/remove-background/url/image", "POST"))["error"]["code"] == "not_acceptable"

    negotiated = await gw.client.post("/v1/remove-background/file", data=form(), headers={**auth, "Accept": "image/png"})
    assert negotiated.status == 200 and negotiated.content_type == "image/png"
    await contract.check(negotiated, "/v1/remove-background/file", "POST")
    assert negotiated.headers["X-Foreground-Left"] == "0" and negotiated.headers["Vary"] == "Accept"

    files = await gw.client.post("/v1/remove-background/batch/files", data=form("files", 2), headers=auth)
    assert files.status == 202
    assert (await contract.check(files, "/v1/remove-background/batch/files", "POST"))["data"]["total_images"] == 2
    urls = await gw.client.post("/v1/remove-background/batch/urls", json={"urls": [url]}, headers=auth)
    assert urls.status == 202
    assert (await contract.check(urls, "/v1/remove-background/batch/urls", "POST"))["data"]["total_images"] == 1

    for path, wrong, kwargs in (
        ("/v1/remove-background/batch/files", "multipart/form-data", {"json": {"urls": [url]}}),
        ("/v1/remove-background/batch/urls", "application/json", {"data": form("files")}),
    ):
        answer = await gw.client.post(path, headers=auth, **kwargs)
        assert answer.status == 400, path
        body = await contract.check(answer, path, "POST")
        assert body["error"]["code"] == "invalid_request"
        assert body["error"]["message"] == f"{path} takes only Content-Type: {wrong}"
