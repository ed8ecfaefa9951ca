"""The stack's command line: flags into StackSettings, the banner, and main (exit 0 stopped, 1 failed, 2 bad flags)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from common.credentials import (
    FILE_SUFFIX,
    SecretFileError,
    from_environment,
    mask_url,
    mask_urls_in,
    secret_flags,
)
from common.logs import masking_handler
from tools.stack.parts import DEMO_KEY_FILE, compose, demo_api_key
from tools.stack.settings import (
    FETCH_ALLOW_NETWORKS_VARIABLE,
    GATEWAY_SECRET_URLS,
    LOCAL_NETWORKS,
    LOG_LEVELS,
    REPLICA_PORT_STEP,
    ROOT,
    SettingsError,
    StackError,
    StackSettings,
    gateway_environment,
    validate,
)
from tools.stack.supervisor import GIVE_UP_DEATHS, GIVE_UP_WINDOW_S, Part, Supervisor

_LOGGER = logging.getLogger(__name__)


def _count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 8:
        raise argparse.ArgumentTypeError("must be between 1 and 8")
    return value


def _resolved_path(text: str) -> Path:
    return Path(text).resolve()


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _parser() -> argparse.ArgumentParser:
    """One flag per StackSettings field, each flag's destination that field's name."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.stack",
        description="Run the whole service locally: Triton, the gRPC inference service and the HTTP gateway "
        "(one of each by default, on SQLite and files in a data directory), supervised: a part that dies is "
        "restarted with backoff while the others keep serving; the stack stops on Ctrl-C/SIGTERM or when a part "
        f"dies {GIVE_UP_DEATHS} times within {GIVE_UP_WINDOW_S:.0f} s. Each part logs to data-dir/logs/<part>.log; "
        f"the terminal shows the stack's own progress. Replica i of a part listens on each port flag + "
        f"{REPLICA_PORT_STEP} x (i - 1).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address every part binds (default: %(default)s)")
    parser.add_argument(
        "--data-dir", type=_resolved_path, default="var",
        help="SQLite database, output files, logs and the demo API key (default: ./%(default)s)",
    )
    parser.add_argument("--gateways", type=_count, default=1, help="gateway replicas (default: %(default)s)")
    parser.add_argument(
        "--inference-services", type=_count, default=1, help="inference service replicas (default: %(default)s)"
    )
    parser.add_argument("--tritons", type=_count, default=1, help="Triton replicas (default: %(default)s)")

    def secret_url_help(what: str, name: str, otherwise: str) -> str:
        variable = GATEWAY_SECRET_URLS[name]
        return (f"{what} (default: ${variable} or the file ${variable}{FILE_SUFFIX} names, else {otherwise}); "
                f"prefer those to this flag: a password on the command line is visible to every user in `ps`")

    parser.add_argument("--database-url", default=None, help=secret_url_help(
        "the gateways' database, e.g. postgresql+asyncpg://user@host/db", "database_url", "SQLite in the data dir"))
    parser.add_argument("--redis-url", default=None, help=secret_url_help(
        "redis://... shared rate limits", "redis_url", "in-memory"))
    parser.add_argument("--storage-url", default=None, help=secret_url_help(
        "the gateways' object storage, e.g. s3://bucket?endpoint=...", "storage_url", "files in the data dir"))
    parser.add_argument(
        "--allow-local-fetch", action="store_true",
        help=f"development only: let URL inputs (url, bg_image_url, JSON batches) and webhooks reach this machine "
        f"({', '.join(LOCAL_NETWORKS)}), e.g. images served by `python -m http.server --bind 127.0.0.1`; without "
        f"it, as in production, loopback and private addresses are refused (adds to ${FETCH_ALLOW_NETWORKS_VARIABLE})",
    )
    parser.add_argument("--port", type=int, default=8080, help="gateway HTTP port (default: %(default)s)")
    parser.add_argument("--grpc-port", type=int, default=50051, help="inference service gRPC port (default: %(default)s)")
    parser.add_argument(
        "--inference-metrics-port", type=int, default=9101,
        help="inference service Prometheus /metrics port (default: %(default)s)",
    )
    parser.add_argument(
        "--gateway-metrics-port", type=int, default=9102,
        help="gateway Prometheus /metrics port, never the API's (default: %(default)s)",
    )
    parser.add_argument("--triton-http-port", type=int, default=8000, help="(default: %(default)s)")
    parser.add_argument("--triton-grpc-port", type=int, default=8001, help="(default: %(default)s)")
    parser.add_argument("--triton-metrics-port", type=int, default=8002, help="(default: %(default)s)")
    parser.add_argument("--log-level", default="INFO", choices=LOG_LEVELS, type=str.upper)
    parser.add_argument(
        "--model-repository", type=_resolved_path, default=str(ROOT / "triton_models"), help="Triton model repository"
    )
    parser.add_argument(
        "--models", type=_names, default="isnet",
        help="models Triton loads at start, comma-separated (default: %(default)s, the inference service's default "
        "model); the others in --model-repository load when a request first names one. Each loaded model is a "
        "process holding its own weights and runtime (about 0.9 GB for ISNet). '' loads every model at start",
    )
    return parser


def parse_settings(argv: Sequence[str] | None = None) -> StackSettings:
    parser = _parser()
    values = vars(parser.parse_args(argv))
    for name, variable in GATEWAY_SECRET_URLS.items():
        if values[name] is None:
            try:
                values[name] = from_environment(variable)[0]
            except SecretFileError as exc:
                parser.error(str(exc))
    return StackSettings(**values)


def banner(settings: StackSettings, parts: Sequence[Part], api_key: str, account_note: str) -> str:
    base = settings.gateway_url(0)
    key_file = settings.data_dir / DEMO_KEY_FILE
    width = max(len(part.name) for part in parts)
    lines = [
        "",
        "RemovAI is running. Ctrl-C stops it.",
        f"  API base:     {base}",
        f"  API docs:     {base}/v1/docs   (every endpoint is under /v1)",
        f"  try-it page:  {base}/",
        f"  demo API key: {api_key}",
        f"    {account_note}; kept in {key_file} (mode 0600) so later starts show it again.",
        "    A local demo convenience only: in production create accounts and keys with `removai-admin --data-dir DATA_DIR` (`removai-admin --help`).",
        "  parts (a part that dies is restarted; pids change then, see the lines logged):",
    ]
    for part in parts:
        lines.append(f"    {part.name:<{width}}  pid {part.pid}  {part.address}  log {part.log_path}")
    database = mask_url(settings.database_url) if settings.database_url else f"SQLite {settings.data_dir / 'removai.db'}"
    storage = mask_url(settings.storage_url) if settings.storage_url else f"files in {settings.data_dir / 'files'}"
    limits = f"Redis {mask_url(settings.redis_url)}" if settings.redis_url else "in-memory, per gateway"
    models = (f"{', '.join(settings.models)} at start, the repository's others when first asked for"
              if settings.models else f"every model in {settings.model_repository}")
    if settings.allow_local_fetch:
        fetches = (f"may reach this machine ({', '.join(LOCAL_NETWORKS)}): --allow-local-fetch, for development "
                   "only")
    else:
        fetches = "public addresses only (--allow-local-fetch lets them reach images served on this machine)"
    lines += [f"  models: {models}", f"  database: {database}", f"  rate limits: {limits}", f"  storage: {storage}",
              f"  URL fetches and webhooks: {fetches}", ""]
    if settings.gateways > 1 and not settings.database_url:
        lines.insert(-1, "  note: several gateways share one SQLite file; set REMOVAI_GATEWAY_DATABASE_URL for PostgreSQL")
    return "\n".join(lines)


async def run_supervised(settings: StackSettings) -> int:
    """Runs the stack to the end; 0 after a requested stop, 1 when a part failed."""
    supervisor = Supervisor(compose(settings).tiers)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, supervisor.request_stop, sig)
    try:
        api_key, account_note = await demo_api_key(settings.data_dir, gateway_environment(settings))
        if await supervisor.start():
            print(banner(settings, supervisor.parts, api_key, account_note), flush=True)
            await supervisor.finished.wait()
    finally:
        # A second Ctrl-C must not cut the orderly shutdown short: each step is bounded by its own timeout.
        if supervisor.failure is not None:
            _LOGGER.error("%s", supervisor.failure)
            _LOGGER.error("stopping the other parts")
        await supervisor.stop()
    _LOGGER.info("stopped")
    return 1 if supervisor.failure is not None else 0


def run(settings: StackSettings) -> int:
    validate(settings)
    return asyncio.run(run_supervised(settings))


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    settings = parse_settings(arguments)
    # Masked: the stack's own lines quote its parts' errors and logs, which may name a URL with its password.
    logging.basicConfig(
        level=settings.log_level, handlers=[masking_handler("%(asctime)s %(levelname)s %(name)s: %(message)s")]
    )
    for flag in secret_flags(arguments):
        variable = GATEWAY_SECRET_URLS.get(flag[2:].replace("-", "_"), "the gateway's variable")
        _LOGGER.warning("%s puts a password on the command line, where every user of this machine reads it (ps); "
                        "set %s, or %s%s naming a file that holds it, instead", flag, variable, variable, FILE_SUFFIX)
    try:
        return run(settings)
    except SettingsError as exc:
        print(f"tools.stack: {mask_urls_in(str(exc))}", file=sys.stderr)
        return 2
    except StackError as exc:
        _LOGGER.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C before the signal handlers were installed: nothing was started.
        return 130
