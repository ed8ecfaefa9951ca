"""How an external client calls the HTTP API: upload a file, honour the rate limit, download the cut-out.

    REMOVAI_API_KEY=... python examples/http_client.py INPUT.jpg OUTPUT.png [--url http://127.0.0.1:8080]

Uses only aiohttp. Retries 429 after Retry-After and 5xx with exponential backoff, as the spec advises.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp


async def remove_background(session: aiohttp.ClientSession, base: str, key: str, image: Path) -> dict[str, Any]:
    for attempt in range(5):
        form = aiohttp.FormData()
        form.add_field("file", image.read_bytes(), filename=image.name)
        form.add_field("output_format", "png")
        async with session.post(f"{base}/v1/remove-background/file", data=form,
                                headers={"X-API-Key": key}) as response:
            body: dict[str, Any] = await response.json()
            print(f"{response.status}: {response.headers.get('X-RateLimit-Remaining')} requests left "
                  f"this minute", file=sys.stderr)
            if response.status == 429 or response.status >= 500:
                await asyncio.sleep(float(response.headers.get("Retry-After", 2**attempt)))
                continue
            if not body["success"]:
                raise RuntimeError(f"{body['error']['code']}: {body['error']['message']}")
            data: dict[str, Any] = body["data"]
            return data
    raise RuntimeError("gave up after 5 attempts")


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--url", default=os.environ.get("REMOVAI_URL", "http://127.0.0.1:8080"))
    args = parser.parse_args()
    key = os.environ["REMOVAI_API_KEY"]
    async with aiohttp.ClientSession() as session:
        try:
            image = await remove_background(session, args.url.rstrip("/"), key, args.input)
        except RuntimeError as error:
            print(f"failed: {error}", file=sys.stderr)
            return 1
        # output_url is a signed, expiring link: no API key needed to fetch it.
        async with session.get(image["output_url"]) as response:
            args.output.write_bytes(await response.read())
    print(f"{image['id']} {image['status']} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
