"""`python -m inference_service [--flags]`: runs the gRPC inference service until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys

from pydantic import ValidationError
from pydantic_settings import CliApp

from common.credentials import mask_urls_in
from common.logs import configure_logging
from inference_service.server import create_server
from inference_service.settings import InferenceSettings


async def _serve(settings: InferenceSettings) -> None:
    running = create_server(settings)
    await running.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await running.stop()


def main(argv: list[str] | None = None) -> int:
    try:
        settings = CliApp.run(InferenceSettings, cli_args=sys.argv[1:] if argv is None else argv)
    except ValidationError as exc:
        # Its settings hold no secret today; the message echoes what was given, so URLs in it are masked anyway.
        print(f"invalid settings:\n{mask_urls_in(str(exc))}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_json)
    asyncio.run(_serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
