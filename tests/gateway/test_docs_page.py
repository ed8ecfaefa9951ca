"""The API documentation page (/v1/docs) in a real headless Chromium: it renders every operation and schema of
the served document, with each operation's curl and Python example, under a strict CSP with no error."""

from __future__ import annotations

from playwright.async_api import Browser

from gateway.http.openapi import CONTENT_SECURITY_POLICY
from tests.gateway.harness import Gateway


async def test_docs_page_is_static_and_served_under_a_strict_policy(gw: Gateway) -> None:
    """GET /v1/docs needs no key, is a static page loading only our own script and stylesheet, links to the
    document and the try-it page, and sets a CSP without inline code or other origins."""
    response = await gw.client.get("/v1/docs", headers={"X-API-Key": "rmv_wrong"})
    page = await response.text()
    assert response.status == 200 and response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY and "script-src 'self';" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY and "http" not in CONTENT_SECURITY_POLICY
    assert response.headers["X-Content-Type-Options"] == "nosniff" and "X-RateLimit-Limit" not in response.headers
    assert '<script src="/static/docs.js" defer></script>' in page and "http://" not in page
    assert 'href="/v1/openapi.json"' in page and 'href="/"' in page
    for name, content_type in (("docs.js", "text/javascript"), ("docs.css", "text/css")):
        asset = await gw.client.get(f"/static/{name}")
        assert asset.status == 200 and asset.headers["Content-Type"].startswith(content_type)
    assert 'href="/v1/docs"' in await (await gw.client.get("/")).text()


async def test_docs_page_renders_every_operation_schema_and_example(gw: Gateway, browser: Browser) -> None:
    """In Chromium the page renders each path, operation, error response and schema of the served document and
    each operation's curl and Python sample verbatim, with no console error (CSP violations included)."""
    document = await (await gw.client.get("/v1/openapi.json")).json()
    context = await browser.new_context()
    page = await context.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    try:
        await page.goto(str(gw.client.make_url("/v1/docs")))
        await page.wait_for_selector("#docs[aria-busy=false]", timeout=30_000)
        for path, item in document["paths"].items():
            for operation in item.values():
                section = page.locator(f"#op-{operation['operationId']}")
                assert path in await section.locator("h3").inner_text()
                for sample in operation["x-codeSamples"]:
                    shown = await section.locator(f"pre.sample-{sample['label']}").text_content()
                    assert shown == sample["source"], (path, sample["label"])
        for name in document["components"]["schemas"]:
            assert await page.locator(f"#schema-{name}").count() == 1, name
        for name in document["components"]["responses"]:
            assert await page.locator(f"#response-{name}").count() == 1, name
        text = await page.inner_text("body")
        for word in ("invalid_api_key", "quota_exceeded", "X-API-Key", "GetBatch", "DeleteImage"):
            assert word in text, word
        assert problems == []
    finally:
        await context.close()
