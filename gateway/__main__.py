"""`python -m gateway [--flags]`: runs the public HTTP API (and Prometheus metrics on their own port) until
SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import sys

from pydantic import ValidationError
from pydantic_settings import CliApp

from common.credentials import SecretFileError, mask_urls_in, secret_flags
from common.logs import configure_logging
from gateway.http.app import create_app
from gateway.http.server import serve
from gateway.settings import GatewaySettings

_LOGGER = logging.getLogger(__name__)
_ENV_PREFIX = GatewaySettings.model_config.get("env_prefix", "REMOVAI_GATEWAY_")
# Settings that are secrets whatever their value looks like (a URL setting is one only when it carries a
# password or a credential parameter).
_SECRET_SETTINGS = ("url_signing_secret",)


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    try:
        settings = CliApp.run(GatewaySettings, cli_args=arguments)
    except ValidationError as exc:
        print(f"invalid settings:\n{mask_urls_in(str(exc))}", file=sys.stderr)
        return 2
    except SecretFileError as exc:
        print(f"invalid settings: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_json)
    for flag in secret_flags(arguments, _SECRET_SETTINGS):
        setting = flag[2:].replace("-", "_").upper()
        _LOGGER.warning("%s puts a secret on the command line, which every user of this machine can read (ps); "
                        "set %s%s, or %s%s_FILE naming a file that holds it", flag, _ENV_PREFIX, setting,
                        _ENV_PREFIX, setting)
    asyncio.run(serve(create_app(settings)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
