"""`removai`: remove backgrounds from files, folders and URLs through the RemovAI API, and run admin tasks.

Usage:

  removai remove PATH... [--out DIR] [--api-key KEY] [--url URL] [--format png|jpg|webp]
                 [--size original|small|medium|large] [--bg-color #RRGGBB] [--concurrency N]
                 [--overwrite] [--grpc HOST:PORT]
  removai admin [--database-url URL] accounts create --name NAME --plan basic|pro|enterprise [--email EMAIL]
  removai admin [--database-url URL] accounts list
  removai admin [--database-url URL] keys rotate ACCOUNT_ID
  removai admin [--database-url URL] webhook-secret show ACCOUNT_ID
  removai admin [--database-url URL] webhook-secret rotate ACCOUNT_ID [--overlap-s SECONDS]

PATH is a file, a folder (searched recursively for .jpg, .jpeg, .png and .webp) or an http(s) URL. Each
cut-out is written to `<out>/<stem>.<format>`; an existing file is never replaced: the new one gets `-1`,
`-2`, ... before the extension, unless --overwrite is given. Exit status: 0 when every image succeeded,
1 when some failed (each failure is listed with its error code and message), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import aiohttp
import grpc
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gateway import admin
from inference_service.client import CHANNEL_OPTIONS
from removai.v1 import inference_pb2_grpc as pb_grpc
from removai_cli.inputs import OutputFolder, Source, UsageError, collect_sources, is_url
from removai_cli.removers import (
    DirectRemover,
    GatewayRemover,
    OutputFormat,
    OutputSize,
    RemovalError,
    RemovalOptions,
    Remover,
    RetryPolicy,
)

_LOGGER = logging.getLogger(__name__)

API_KEY_VARIABLE = "REMOVAI_API_KEY"
URL_VARIABLE = "REMOVAI_URL"
DEFAULT_URL = "http://127.0.0.1:8080"
_HEX_COLOR = re.compile(r"^#[0-9A-Fa-f]{6}$")
_HOST_PORT = re.compile(r"^\[?[A-Za-z0-9.:-]+\]?:\d{1,5}$")


def _bg_color(value: str) -> str:
    if not _HEX_COLOR.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a #RRGGBB colour")
    return value.upper()


def _at_least_one(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return number


def _positive_seconds(value: str) -> float:
    seconds = float(value)
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return seconds


def _host_port(value: str) -> str:
    if not _HOST_PORT.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="removai", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log retries and waits")
    actions = parser.add_subparsers(dest="action", required=True, metavar="{remove,admin}")

    remove = actions.add_parser(
        "remove", help="remove the background of files, folders and URLs",
        description="Remove backgrounds; exits 0 when all succeeded, 1 when some failed, 2 on usage errors.",
    )
    remove.add_argument("paths", nargs="+", metavar="PATH", help="image file, folder (recursive) or http(s) URL")
    remove.add_argument("--out", type=Path, default=Path("."), metavar="DIR",
                        help="folder for the cut-outs, created if missing (default: the current folder)")
    remove.add_argument("--overwrite", action="store_true",
                        help="replace existing files in --out (default: keep them and write <stem>-1.<ext>, ...)")
    remove.add_argument("--api-key", default=os.environ.get(API_KEY_VARIABLE), metavar="KEY",
                        help=f"API key (default: ${API_KEY_VARIABLE}); not needed with --grpc")
    remove.add_argument("--url", default=os.environ.get(URL_VARIABLE) or DEFAULT_URL,
                        help=f"the gateway's base URL (default: ${URL_VARIABLE}, else {DEFAULT_URL})")
    remove.add_argument("--format", dest="output_format", default="png", choices=get_args(OutputFormat),
                        help="output format (default: png)")
    remove.add_argument("--size", dest="output_size", default="original", choices=get_args(OutputSize),
                        help="longer side: small 1080, medium 1920, large 2880 px; never upscaled (default: original)")
    remove.add_argument("--bg-color", type=_bg_color, metavar="#RRGGBB",
                        help="background colour (jpg: white unless given; png/webp: transparent unless given)")
    remove.add_argument("--concurrency", type=_at_least_one, default=4, metavar="N",
                        help="images in flight at once (default: 4)")
    remove.add_argument("--max-attempts", type=_at_least_one, default=5, metavar="N",
                        help="tries per request: 429s wait for the rate-limit window, 5xx and connection "
                             "errors back off exponentially, other 4xx are not retried (default: 5)")
    remove.add_argument("--timeout", type=_positive_seconds, default=300.0, metavar="SECONDS",
                        help="limit for each request (default: 300)")
    remove.add_argument("--grpc", type=_host_port, metavar="HOST:PORT",
                        help="talk to the inference service directly instead of the gateway (files only)")
    remove.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    admin.add_arguments(actions.add_parser(
        "admin", help="operator commands on the gateway's database (accounts, API keys, webhook secrets)",
        description=admin.__doc__,
    ))
    return parser


@dataclass(frozen=True)
class Outcome:
    source: Source
    written: Path | None = None
    error: RemovalError | None = None


async def _remove_one(source: Source, remover: Remover, output: OutputFolder, extension: str) -> Outcome:
    try:
        cutout = await remover.remove(source)
        return Outcome(source, written=await asyncio.to_thread(output.write, source.stem, extension, cutout))
    except RemovalError as error:
        return Outcome(source, error=error)
    except OSError as exc:
        return Outcome(source, error=RemovalError("io_error", str(exc)))


async def remove_all(
    sources: Sequence[Source], remover: Remover, output: OutputFolder, extension: str, *, concurrency: int,
    progress: Progress,
) -> list[Outcome]:
    """Runs up to `concurrency` sources at once; the outcomes come back in the sources' order."""
    slots = asyncio.Semaphore(concurrency)
    task = progress.add_task("removing backgrounds", total=len(sources))

    async def one(source: Source) -> Outcome:
        async with slots:
            outcome = await _remove_one(source, remover, output, extension)
        progress.advance(task)
        return outcome

    return list(await asyncio.gather(*(one(source) for source in sources)))


def print_summary(outcomes: Sequence[Outcome]) -> None:
    failures = [outcome for outcome in outcomes if outcome.error is not None]
    for outcome in outcomes:
        if outcome.written is not None:
            print(f"ok      {outcome.source.label} -> {outcome.written}")
    for outcome in failures:
        assert outcome.error is not None
        print(f"failed  {outcome.source.label}: {outcome.error.describe()}")
    print(f"{len(outcomes) - len(failures)} succeeded, {len(failures)} failed")


async def _remove(arguments: argparse.Namespace) -> int:
    if arguments.grpc:
        urls = [path for path in arguments.paths if is_url(path)]
        if urls:
            raise UsageError(f"--grpc takes local files only (the gateway fetches URLs); got {urls[0]}")
    elif not arguments.api_key:
        raise UsageError(f"an API key is needed: --api-key KEY or ${API_KEY_VARIABLE} (or use --grpc)")
    sources = collect_sources(arguments.paths)
    options = RemovalOptions(arguments.output_format, arguments.output_size, arguments.bg_color)
    policy = RetryPolicy(max_attempts=arguments.max_attempts)
    output = OutputFolder(arguments.out, overwrite=arguments.overwrite)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), disable=arguments.no_progress, transient=True,
    )
    with progress:
        if arguments.grpc:
            async with grpc.aio.insecure_channel(arguments.grpc, options=CHANNEL_OPTIONS) as channel:
                remover: Remover = DirectRemover(
                    pb_grpc.BackgroundRemovalStub(channel), options, policy, arguments.timeout
                )
                outcomes = await remove_all(sources, remover, output, arguments.output_format,
                                            concurrency=arguments.concurrency, progress=progress)
        else:
            timeout = aiohttp.ClientTimeout(total=arguments.timeout)
            connector = aiohttp.TCPConnector(limit=arguments.concurrency)
            async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
                remover = GatewayRemover(session, arguments.url, arguments.api_key, options, policy)
                outcomes = await remove_all(sources, remover, output, arguments.output_format,
                                            concurrency=arguments.concurrency, progress=progress)
    print_summary(outcomes)
    return 1 if any(outcome.error is not None for outcome in outcomes) else 0


async def run(argv: Sequence[str] | None = None) -> int:
    """Parses `argv` (default: sys.argv[1:]), runs the command and returns the exit status."""
    try:
        arguments = _parser().parse_args(argv)
    except SystemExit as exit_:
        # argparse exits 2 on usage errors and 0 after --help; hand the status back instead.
        return exit_.code if isinstance(exit_.code, int) else 2
    if arguments.verbose:
        logging.getLogger("removai_cli").setLevel(logging.INFO)
    try:
        if arguments.action == "admin":
            return await admin.execute(arguments)
        return await _remove(arguments)
    except UsageError as error:
        print(f"removai: error: {error}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `removai` console script and `python -m removai_cli`."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(run(argv))


if __name__ == "__main__":
    sys.exit(main())
