"""The "Try it out" page in a real headless Chromium against the real gateway, inference service and Triton."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest_asyncio
from playwright.async_api import Browser, ConsoleMessage, Page

from tests.gateway.harness import Gateway, ImageHost
from tests.reference import DATA

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
RESULT_TIMEOUT_MS = 120_000



@dataclass
class Tab:
    """A browser tab and the console errors (CSP violations included) and script exceptions it logged."""

    page: Page
    errors: list[str] = field(default_factory=list)


@pytest_asyncio.fixture
async def tab(browser: Browser) -> AsyncIterator[Tab]:
    """A fresh tab in its own context (own sessionStorage), recording errors."""
    context = await browser.new_context(viewport={"width": 1200, "height": 900})
    opened = Tab(await context.new_page())

    def record(message: ConsoleMessage) -> None:
        if message.type == "error":
            opened.errors.append(message.text)

    opened.page.on("console", record)
    opened.page.on("pageerror", lambda exc: opened.errors.append(str(exc)))
    try:
        yield opened
    finally:
        await context.close()


async def wait_for_cutout(page: Page) -> dict[str, object]:
    """Waits for the result <img> to finish loading; returns its src and natural size."""
    await page.wait_for_selector("#cutout[data-state]", timeout=RESULT_TIMEOUT_MS)
    state: dict[str, object] = await page.eval_on_selector(
        "#cutout",
        "img => ({state: img.dataset.state, src: img.src, width: img.naturalWidth, height: img.naturalHeight})",
    )
    return state


async def drop_file(page: Page, selector: str, path: Path) -> None:
    """Drops a file on an element the way a drag from the desktop does: a drop event with a DataTransfer."""
    transfer = await page.evaluate_handle(
        """([name, encoded]) => {
            const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, {type: "image/jpeg"}));
            return transfer;
        }""",
        [path.name, base64.b64encode(path.read_bytes()).decode()],
    )
    await page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


async def test_page_is_public_and_served_under_a_strict_policy(gw: Gateway) -> None:
    """GET / and its assets need no API key and carry the CSP and nosniff; unknown assets are 404 envelopes."""
    response = await gw.client.get("/")
    html = await response.text()
    assert response.status == 200, html
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy
    assert "img-src 'self' blob: data:" in policy
    assert "frame-ancestors 'none'" in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "X-RateLimit-Limit" not in response.headers
    assert '<script src="/static/try.js" defer></script>' in html
    assert '<a id="docs-link" href="/v1/docs">' in html and 'href="#key-help"' in html
    assert "removai-admin accounts create" in html and "missing_api_key" not in html
    assert "http://" not in html and "https://" not in html.replace("https://example.com", "")

    for name, content_type in [("try.js", "text/javascript"), ("try.css", "text/css")]:
        asset = await gw.client.get(f"/static/{name}")
        assert asset.status == 200
        assert asset.headers["Content-Type"].startswith(content_type)
        assert asset.headers["X-Content-Type-Options"] == "nosniff"
        assert asset.headers["Content-Security-Policy"] == policy

    for missing in ["/static/page.py", "/static/..%2Fhandlers%2Fpage.py", "/static/try.html"]:
        refused = await gw.client.get(missing)
        body = await refused.json()
        assert refused.status == 404, body
        assert body["success"] is False and body["error"]["code"] == "not_found"


async def test_file_upload_shows_the_cutout_json_and_rate_limit(gw: Gateway, tab: Tab) -> None:
    """Key + chosen file + webp -> the cut-out loads from output_url; JSON says completed; limit is 60."""
    page = tab.page
    _, key = await gw.account("pro")
    await page.goto(str(gw.client.make_url("/")))
    await page.get_by_label("X-API-Key").fill(key)
    await page.set_input_files("#file-input", DATA / "chelsea.jpg")
    assert "chelsea.jpg" in await page.inner_text("#file-name")
    await page.get_by_label("Format").select_option("webp")
    await page.get_by_role("button", name="Remove background").click()

    cutout = await wait_for_cutout(page)
    body = json.loads(await page.inner_text("#response-json"))
    assert cutout["state"] == "loaded", body
    assert cutout["src"] == body["data"]["output_url"]
    assert isinstance(cutout["width"], int) and cutout["width"] > 0
    assert body["success"] is True and body["data"]["status"] == "completed"
    assert body["data"]["output_format"] == "webp"
    assert "completed" in await page.inner_text("#response-json")
    assert await page.inner_text("#http-status") == "HTTP 200"
    data = body["data"]
    result_facts = await page.inner_text("#result-facts")
    assert result_facts.startswith(f"{data['width']} × {data['height']} px WEBP, "), result_facts
    assert re.fullmatch(r".* px WEBP, [0-9.]+ (B|KB|MB), done in [0-9.]+ s\.", result_facts), result_facts
    rate_facts = await page.inner_text("#rate-facts")
    assert re.fullmatch(
        r"\d+ of 60 requests left in this minute's window; it resets at .+ \(in \d+ s\)\.", rate_facts
    ), rate_facts
    assert rate_facts.startswith(f"{await page.inner_text('#rl-remaining')} of 60 ")
    assert await page.inner_text("#rl-limit") == "60"
    assert 0 <= int(await page.inner_text("#rl-remaining")) < 60
    reset = await page.inner_text("#rl-reset")
    epoch, local_time = reset.split(maxsplit=1)
    assert epoch.isdigit() and local_time.endswith("local time)")
    assert await page.is_hidden("#error")
    original = await page.get_attribute("#original-frame img", "src")
    assert original is not None and original.startswith("blob:")
    assert await page.get_attribute("#download", "href") == body["data"]["output_url"]
    assert await page.get_attribute("#download", "download") == f"{body['data']['id']}.webp"
    assert await page.is_enabled("#submit")
    assert await page.get_attribute("#results", "aria-busy") == "false"
    assert key not in page.url
    assert await page.evaluate("sessionStorage.length") == 0
    assert tab.errors == []  # nothing blocked by the CSP, no script errors

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "try-page.png"), full_page=True)


async def test_wrong_key_shows_the_envelope_error(gw: Gateway, tab: Tab) -> None:
    """A file dropped on the drop zone with a wrong key: the alert shows invalid_api_key and its message;
    no cut-out, no rate-limit headers."""
    page = tab.page
    await page.goto(str(gw.client.make_url("/")))
    await page.get_by_label("X-API-Key").fill("rk_live_not_a_real_key")
    await drop_file(page, "#drop-zone", DATA / "chelsea.jpg")
    assert "chelsea.jpg" in await page.inner_text("#file-name")
    await page.get_by_role("button", name="Remove background").click()

    await page.wait_for_selector("#error:not([hidden])", timeout=RESULT_TIMEOUT_MS)
    assert await page.inner_text("#error-code") == "invalid_api_key"
    assert "invalid or missing" in await page.inner_text("#error-message")
    assert "HTTP 401" in await page.inner_text("#error-message")
    assert await page.get_attribute("#error", "role") == "alert"
    body = json.loads(await page.inner_text("#response-json"))
    assert body["success"] is False and body["error"]["code"] == "invalid_api_key"
    assert await page.inner_text("#rl-limit") == "—"
    assert await page.query_selector("#cutout") is None
    assert await page.is_hidden("#download")
    dropped = await page.get_attribute("#original-frame img", "src")
    assert dropped is not None and dropped.startswith("blob:")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "try-page-error.png"), full_page=True)


async def test_url_submission_with_a_background_colour(gw: Gateway, image_host: ImageHost, tab: Tab) -> None:
    """URL + jpg + a picked colour + edge cleaning off -> JSON call (decontaminate false, echoed); the remote
    original is linked, the cut-out loads."""
    page = tab.page
    _, key = await gw.account("pro")
    url = image_host.url("/photos/coffee.jpg")
    await page.goto(str(gw.client.make_url("/")))
    await page.get_by_label("X-API-Key").fill(key)
    await page.get_by_label("Remember for this tab only").check()
    await page.get_by_label("From a URL").check()
    await page.get_by_label("Image URL").fill(url)
    await page.get_by_label("Format").select_option("jpg")
    await page.get_by_label("None (transparent)").uncheck()
    await page.fill("#bg-color", "#ff0000")
    await page.get_by_label("Clean edge colours").uncheck()
    await page.get_by_role("button", name="Remove background").click()

    cutout = await wait_for_cutout(page)
    body = json.loads(await page.inner_text("#response-json"))
    assert cutout["state"] == "loaded", body
    assert body["data"]["decontaminate"] is False
    assert cutout["src"] == body["data"]["output_url"]
    assert body["data"]["status"] == "completed"
    assert body["data"]["original_url"] == url
    assert body["data"]["output_format"] == "jpg" and body["data"]["bg_color"] == "#FF0000"
    assert await page.inner_text("#rl-limit") == "60"
    assert await page.get_attribute("#original-frame a", "href") == url
    # The remote original is described from the result, never put in an <img> the CSP would break.
    assert await page.query_selector("#original-frame img") is None
    fetched = await page.inner_text("#original-frame")
    assert fetched.startswith(f"Fetched by the gateway from {url}.")
    assert f"{body['data']['width']} × {body['data']['height']} px" in fetched
    broken = await page.eval_on_selector_all("img", "imgs => imgs.filter(i => !i.complete || !i.naturalWidth).length")
    assert broken == 0
    assert "px JPG, " in await page.inner_text("#result-facts")
    assert tab.errors == []
    assert await page.evaluate("sessionStorage.getItem('removai.apiKey')") == key
    assert key not in page.url


async def test_no_key_is_a_plain_message_and_the_page_says_where_keys_come_from(gw: Gateway, tab: Tab) -> None:
    """Submitting without a key sends nothing and says so in plain words at the key field (no made-up error
    code); the page links to the API docs and explains how a key is obtained."""
    page = tab.page
    await page.goto(str(gw.client.make_url("/")))
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url) if "/v1/" in request.url else None)
    await page.set_input_files("#file-input", DATA / "chelsea.jpg")
    await page.get_by_role("button", name="Remove background").click()

    await page.wait_for_selector("#error:not([hidden])")
    assert await page.inner_text("#error-code") == "No API key."
    message = await page.inner_text("#error-message")
    assert "Enter your API key" in message and "Where do I get an API key?" in message
    assert await page.get_attribute("#api-key", "aria-invalid") == "true"
    assert await page.evaluate("document.activeElement.id") == "api-key"
    assert "missing_api_key" not in await page.content()
    assert sent == []
    assert await page.is_hidden("#facts")

    await page.get_by_text("Where do I get an API key?", exact=True).last.click()
    assert "removai-admin accounts create" in await page.inner_text("#key-help")
    assert await page.is_visible("#key-help code")

    await page.get_by_role("link", name="API documentation").click()
    await page.wait_for_url("**/v1/docs")
    assert "RemovAI" in await page.title()
    assert tab.errors == []


async def test_mask_model_and_the_foreground_box(gw: Gateway, tab: Tab) -> None:
    """The page lists the models from GET /v1/models; mask + a chosen model shows the mask (captioned so) with
    the foreground box drawn over it where the JSON puts it, and described in words."""
    page = tab.page
    _, key = await gw.account("pro")
    await page.goto(str(gw.client.make_url("/")))
    await page.wait_for_selector("#model[data-state=loaded]", timeout=RESULT_TIMEOUT_MS)
    labels = await page.eval_on_selector_all("#model option", "options => options.map(o => o.textContent)")
    assert labels == ["Default", "isnet (default)", "isnet_int8"]
    await page.get_by_label("X-API-Key").fill(key)
    await page.set_input_files("#file-input", DATA / "chelsea.jpg")
    await page.get_by_label("Output", exact=True).select_option("mask")
    await page.get_by_label("Model").select_option("isnet")
    await page.get_by_role("button", name="Remove background").click()

    cutout = await wait_for_cutout(page)
    body = json.loads(await page.inner_text("#response-json"))
    assert cutout["state"] == "loaded", body
    data = body["data"]
    assert data["output_type"] == "mask" and data["model"] == "isnet"
    assert (cutout["width"], cutout["height"]) == (data["width"], data["height"])
    assert await page.inner_text("#cutout-caption") == "Mask"
    box = data["foreground"]
    assert 0 < box["width"] * box["height"] < data["width"] * data["height"]
    assert await page.inner_text("#foreground") == (
        f"Foreground: {box['width']} × {box['height']} px at ({box['left']}, {box['top']})"
    )
    shown_width, shown_height = await page.eval_on_selector("#cutout", "img => [img.clientWidth, img.clientHeight]")
    outline = await page.eval_on_selector(
        "#foreground-box", "div => [div.offsetLeft, div.offsetTop, div.offsetWidth, div.offsetHeight]"
    )
    scale_x, scale_y = shown_width / data["width"], shown_height / data["height"]
    expected = [box["left"] * scale_x, box["top"] * scale_y, box["width"] * scale_x, box["height"] * scale_y]
    assert all(abs(got - want) <= 2 for got, want in zip(outline, expected)), (outline, expected)
    assert tab.errors == []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "try-page-mask.png"), full_page=True)
