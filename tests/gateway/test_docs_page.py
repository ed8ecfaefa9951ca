"""The API documentation page (/v1/docs) in a real headless Chromium: it renders every operation and schema of
the served document, with each operation's curl and Python example, under a strict CSP with no error; its
markdown is rendered, patterns are shown as written, nothing overflows at 1280 or 390 px and code blocks copy.
The page does not depend on the model: the gateway runs on the `held` test model."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from gateway.http.openapi import CONTENT_SECURITY_POLICY
from tests.gateway.harness import Gateway

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


async def test_docs_page_is_static_and_served_under_a_strict_policy(held_gw: Gateway) -> None:
    """GET /v1/docs needs no key, is a static page loading only our own script and stylesheet, links to the
    document and the try-it page, and sets a CSP without inline code or other origins."""
    response = await held_gw.client.get("/v1/docs", headers={"X-API-Key": "rmv_wrong"})
    page = await response.text()
    assert response.status == 200 and response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY and "script-src 'self';" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY and "http" not in CONTENT_SECURITY_POLICY
    assert response.headers["X-Content-Type-Options"] == "nosniff" and "X-RateLimit-Limit" not in response.headers
    assert '<script src="/static/docs.js" defer></script>' in page and "http://" not in page
    assert page.index('src="/static/markdown-it.min.js"') < page.index('src="/static/docs.js"')
    assert 'href="/v1/openapi.json"' in page and 'href="/"' in page
    for name, content_type in (("docs.js", "text/javascript"), ("docs.css", "text/css"),
                               ("markdown-it.min.js", "text/javascript")):
        asset = await held_gw.client.get(f"/static/{name}")
        assert asset.status == 200 and asset.headers["Content-Type"].startswith(content_type)
    assert 'href="/v1/docs"' in await (await held_gw.client.get("/")).text()


async def test_docs_page_renders_every_operation_schema_and_example(held_gw: Gateway, browser: Browser) -> None:
    """In Chromium the page renders each path, operation, error response and schema of the served document and
    each operation's curl and Python sample verbatim, with no console error (CSP violations included)."""
    document = await (await held_gw.client.get("/v1/openapi.json")).json()
    context = await browser.new_context()
    page = await context.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    try:
        await page.goto(str(held_gw.client.make_url("/v1/docs")))
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


# Every element inside the page's width: its right edge within the viewport, and no box (a <pre>, a table) whose
# content is wider than the box itself (scrolled or clipped). Names the first few offenders.
_OVERFLOWING = """() => {
  const width = document.documentElement.clientWidth;
  const found = [];
  for (const node of document.querySelectorAll("body *")) {
    const box = node.getBoundingClientRect();
    if (box.width === 0 && box.height === 0) continue;
    const style = getComputedStyle(node);
    const clipped = style.overflowX !== "visible" && node.scrollWidth > node.clientWidth + 1;
    if (box.right > width + 0.5 || clipped) {
      found.push(`${node.tagName.toLowerCase()}#${node.id}.${node.className}: right ${Math.round(box.right)}`
        + ` of ${width}, scroll ${node.scrollWidth} client ${node.clientWidth}: ${node.textContent.slice(0, 60)}`);
    }
  }
  return {scrollWidth: document.documentElement.scrollWidth, width, found: found.slice(0, 5)};
}"""


async def _open_docs(browser: Browser, url: str, width: int, problems: list[str]) -> tuple[Any, Page]:
    context = await browser.new_context(viewport={"width": width, "height": 900},
                                        permissions=["clipboard-read", "clipboard-write"])
    page = await context.new_page()
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    await page.goto(url)
    await page.wait_for_selector("#docs[aria-busy=false]", timeout=30_000)
    return context, page


@pytest.mark.parametrize("width", [1280, 390])
async def test_docs_page_renders_markdown_patterns_as_written_and_fits_the_width(
    held_gw: Gateway, browser: Browser, width: int
) -> None:
    """At 1280 and 390 px: the intro's markdown is rendered (its plan list a real list, code spans as <code>, no
    backtick left in the page's text), each schema pattern is shown exactly as the document has it (no doubled
    backslashes), nothing is wider than the page, and a code block's Copy button puts its exact text on the
    clipboard. Screenshots of the page's first 5000 px go to tests/artifacts/ for a human look."""
    document = await (await held_gw.client.get("/v1/openapi.json")).json()
    problems: list[str] = []
    context, page = await _open_docs(browser, str(held_gw.client.make_url("/v1/docs")), width, problems)
    try:
        intro = page.locator("#intro")
        plans = [line[2:] for line in document["info"]["description"].splitlines() if line.startswith("- ")]
        assert len(plans) >= 3
        assert await intro.locator("li").all_inner_texts() == plans
        assert "X-API-Key" in await intro.locator("code").all_inner_texts()
        text = await page.inner_text("#docs")
        assert "`" not in text and "**" not in text

        patterns = {
            (name, field): spec["pattern"]
            for name, schema in document["components"]["schemas"].items()
            for field, spec in schema.get("properties", {}).items() if "pattern" in spec
        }
        assert any("\\" in pattern for pattern in patterns.values())  # one with a backslash, to show as written
        for (name, field), pattern in patterns.items():
            name_cell = page.locator("td:first-child > code", has_text=re.compile(f"^{re.escape(field)}$"))
            row = page.locator(f"#schema-{name} + .md + table tr").filter(has=name_cell)
            assert await row.locator("code.limit-pattern").inner_text() == pattern, (name, field)

        layout = await page.evaluate(_OVERFLOWING)
        assert layout["found"] == [] and layout["scrollWidth"] <= layout["width"], layout

        sample = document["paths"]["/v1/remove-background/url"]["post"]["x-codeSamples"][0]
        block = page.locator(f"#op-removeBackgroundFromUrl .block:has(pre.sample-{sample['label']})")
        await block.locator("button.copy").click()
        await expect(block.locator("button.copy")).to_have_text("Copied")
        assert await page.evaluate("navigator.clipboard.readText()") == sample["source"]

        ARTIFACTS.mkdir(exist_ok=True)
        # The intro, the endpoint list and the first operations (tables, samples): the whole page is 50 000 px
        # and more, slow to capture on a loaded machine; the layout check above covers all of it.
        await page.screenshot(path=str(ARTIFACTS / f"docs-page-{width}.png"), full_page=True,
                              clip={"x": 0, "y": 0, "width": width, "height": 5000}, timeout=120_000)
        assert problems == []
    finally:
        await context.close()
