"""`python -m gateway [--flags]`: runs the public HTTP API until SIGINT/SIGTERM."""

from __future__ import annotations

import sys

from aiohttp import web
from pydantic import ValidationError
from pydantic_settings import CliApp

from common.logs import configure_logging
from gateway.http.access_log import AccessLogger
from gateway.http.app import create_app
from gateway.settings import GatewaySettings


def main(argv: list[str] | None = None) -> int:
    try:
        settings = CliApp.run(GatewaySettings, cli_args=sys.argv[1:] if argv is None else argv)
    except ValidationError as exc:
        print(f"invalid settings:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_json)
    web.run_app(
        create_app(settings), host=settings.host, port=settings.port, print=None, access_log_class=AccessLogger,
        shutdown_timeout=settings.shutdown_timeout_s,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
