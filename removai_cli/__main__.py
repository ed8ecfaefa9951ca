"""`removai`: remove backgrounds from files, folders and URLs through the RemovAI API.

Usage:

  removai [-v] remove PATH... [--out DIR] [--api-key KEY] [--url URL] [--format png|jpg|webp]
                 [--size original|small|medium|large] [--bg-color COLOUR] [--concurrency N]
                 [--mask] [--crop [--crop-margin 30px|10%]] [--model NAME] [--bg-image FILE|URL]
                 [--overwrite | --skip-existing] [--json] [--grpc HOST:PORT] [-v]

Operator tasks (accounts, API keys, webhook secrets) are the gateway's own command, `removai-admin` (also
`python -m gateway.admin`): this client does not ship the server.

PATH is a file, a folder (searched recursively for .jpg, .jpeg, .png and .webp) or an http(s) URL. Each
cut-out is written to `<out>/<stem>.<format>`; files found in a folder keep their subfolder under --out
(photos/a/x.jpg -> <out>/a/x.png). An existing file is never replaced: the new one gets `-1`, `-2`, ...
before the extension, unless --overwrite is given; --skip-existing skips the sources whose cut-out already
exists (to resume a folder). The key and URL are checked once before any upload. Each result is printed as
it finishes (--json: one JSON object a line). Exit status: 0 when every image succeeded, 1 when some failed
(each failure is listed with its error code and message; a path that does not exist is one), 2 when the run
cannot start (usage errors, a refused key, a gateway that cannot be reached), 130 after Ctrl-C (the results
so far are listed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from contract.channel import CHANNEL_OPTIONS
from contract.options import OPTIONS, Option, OptionError, RemovalOptions
from removai.v1 import inference_pb2_grpc as pb_grpc
from removai_cli.inputs import OutputFolder, Source, UsageError, collect_sources, is_url
from removai_cli.removers import (
    DirectRemover,
    GatewayRemover,
    Removal,
    RemovalError,
    Remover,
    RetryPolicy,
    SpecialUseNames,
)

_LOGGER = logging.getLogger(__name__)

API_KEY_VARIABLE = "REMOVAI_API_KEY"
URL_VARIABLE = "REMOVAI_URL"
DEFAULT_URL = "http://127.0.0.1:8080"
_HOST_PORT = re.compile(r"^\[?[A-Za-z0-9.:-]+\]?:\d{1,5}$")


def _option_value(option: Option) -> Callable[[str], object]:
    """The argparse type of an option's flag: the contract's parser, its refusal as argparse's error."""

    def parse(value: str) -> object:
        try:
            return option.parse(value)
        except OptionError as error:
            raise argparse.ArgumentTypeError(f"{value!r}: {error.message}") from None

    parse.__name__ = option.name  # argparse names the type in some messages
    return parse


def _add_option(parser: argparse.ArgumentParser, option: Option) -> None:
    """The option's flag as the contract describes it: a switch, or a value its parser checks."""
    if option.cli is None:
        return
    if option.cli.switch is not None:
        parser.add_argument(option.cli.flag, dest=option.name, action="store_const", const=option.cli.switch,
                            help=option.cli.help)
    else:
        parser.add_argument(option.cli.flag, dest=option.name, type=_option_value(option),
                            metavar=option.cli.metavar, help=option.cli.help)


def _at_least_one(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return number


def _positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError("must be more than 0")
    return seconds


def _host_port(value: str) -> str:
    if not _HOST_PORT.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT (for example 127.0.0.1:50051)")
    return value


_VERBOSE_HELP = "log the account used, retries and waits (before or after the subcommand)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="removai", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help=_VERBOSE_HELP)
    actions = parser.add_subparsers(dest="action", required=True, metavar="{remove}")

    remove = actions.add_parser(
        "remove", help="remove the background of files, folders and URLs",
        description="Remove backgrounds; exits 0 when all succeeded, 1 when some failed, 2 when the run cannot "
                    "start (usage, key, URL), 130 after Ctrl-C.",
    )
    # SUPPRESS: `removai -v remove ...` is not undone by this option's default.
    remove.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=_VERBOSE_HELP)
    remove.add_argument("paths", nargs="+", metavar="PATH", help="image file, folder (recursive) or http(s) URL")
    remove.add_argument("--out", type=Path, default=Path("."), metavar="DIR",
                        help="folder for the cut-outs, created if missing (default: the current folder)")
    remove.add_argument("--overwrite", action="store_true",
                        help="replace existing files in --out (default: keep them and write <stem>-1.<ext>, ...)")
    remove.add_argument("--skip-existing", action="store_true",
                        help="skip sources whose cut-out already exists in --out (resume an interrupted folder)")
    remove.add_argument("--json", action="store_true",
                        help="print one JSON object a line per source (source, status ok/failed/skipped, output "
                             "or error); the summary goes to stderr")
    remove.add_argument("--api-key", default=os.environ.get(API_KEY_VARIABLE), metavar="KEY",
                        help=f"API key (default: ${API_KEY_VARIABLE}); not needed with --grpc")
    remove.add_argument("--url", default=os.environ.get(URL_VARIABLE) or DEFAULT_URL,
                        help=f"the gateway's base URL, with or without /v1 (default: ${URL_VARIABLE}, else "
                             f"{DEFAULT_URL})")
    for option in OPTIONS:  # one flag per removal option the contract gives one (contract/options.py)
        _add_option(remove, option)
    remove.add_argument("--bg-image", metavar="FILE|URL",
                        help="composite over this image, scaled to cover the result (a file, or an http(s) URL)")
    remove.add_argument("--concurrency", type=_at_least_one, default=4, metavar="N",
                        help="images in flight at once (default: 4)")
    remove.add_argument("--max-attempts", type=_at_least_one, default=5, metavar="N",
                        help="tries per request: 429s wait for the rate-limit window, 5xx and connection "
                             "errors back off exponentially, other 4xx are not retried (default: 5)")
    remove.add_argument("--timeout", type=_positive_seconds, default=300.0, metavar="SECONDS",
                        help="limit for each request (default: 300)")
    remove.add_argument("--grpc", type=_host_port, metavar="HOST:PORT",
                        help="talk to the inference service directly instead of the gateway (files only)")
    remove.add_argument("--no-progress", action="store_true", help="no progress bar (none is drawn when the screen is not a terminal)")

    return parser


@dataclass(frozen=True)
class Outcome:
    """How one source ended: written, failed, or skipped because its cut-out already exists."""

    source: Source
    written: Path | None = None
    error: RemovalError | None = None
    skipped: Path | None = None


class Report:
    """Prints each outcome as it finishes (text, or one JSON object a line with --json) and counts them."""

    def __init__(self, console: Console, *, as_json: bool) -> None:
        self.console = console
        self.as_json = as_json
        self.succeeded = self.failed = self.skipped = 0
        self.total = 0  # sources named, missing ones included; set once they are collected

    def add(self, outcome: Outcome) -> None:
        label = outcome.source.label
        record: dict[str, object] = {"source": label}
        if outcome.error is not None:
            self.failed += 1
            error = outcome.error
            record |= {"status": "failed", "error": {"code": error.code, "message": error.message,
                                                     "status": error.status}}
            line = f"failed  {label}: {error.describe()}"
        elif outcome.skipped is not None:
            self.skipped += 1
            record |= {"status": "skipped", "output": str(outcome.skipped)}
            line = f"skipped {label}: {outcome.skipped} exists"
        else:
            self.succeeded += 1
            record |= {"status": "ok", "output": str(outcome.written)}
            line = f"ok      {label} -> {outcome.written}"
        self.console.print(json.dumps(record) if self.as_json else line)

    def summary(self, *, interrupted: bool) -> str:
        parts = [f"{self.succeeded} succeeded", f"{self.failed} failed"]
        if self.skipped:
            parts.append(f"{self.skipped} skipped (already done)")
        if interrupted:
            parts.append(f"{self.total - self.succeeded - self.failed - self.skipped} not done")
            return "interrupted: " + ", ".join(parts)
        return ", ".join(parts)


async def _remove_one(source: Source, remover: Remover, output: OutputFolder, extension: str) -> Outcome:
    try:
        cutout = await remover.remove(source)
        writing = asyncio.ensure_future(asyncio.to_thread(output.write, source, extension, cutout))
        try:
            written = await asyncio.shield(writing)
        except asyncio.CancelledError:
            # Ctrl-C while a cut-out is being written: the write is short and finishes anyway, so wait for it
            # (it is then reported by the caller) rather than leave a file the summary does not mention.
            if not writing.cancelled():
                written = await writing
                raise _CancelledAfterWrite(Outcome(source, written=written)) from None
            raise
        return Outcome(source, written=written)
    except RemovalError as error:
        return Outcome(source, error=error)
    except OSError as exc:
        return Outcome(source, error=RemovalError("io_error", str(exc)))


class _CancelledAfterWrite(Exception):
    """Ctrl-C arrived while the cut-out was written; carries its outcome so it is still reported."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.source.label)
        self.outcome = outcome


async def remove_all(
    sources: Sequence[Source], remover: Remover, output: OutputFolder, extension: str, *, concurrency: int,
    progress: Progress, report: Report,
) -> None:
    """Runs up to `concurrency` sources at once, reporting each as it finishes; on cancellation (Ctrl-C) the
    cut-outs being written are finished and reported, then CancelledError propagates."""
    slots = asyncio.Semaphore(concurrency)
    task = progress.add_task(_WORKING, total=len(sources))

    shown = _WORKING

    def show_wait() -> None:
        # The bar says why it stands still while every request holds back for the rate-limit window.
        nonlocal shown
        wait = remover.waiting_s()
        text = f"waiting {math.ceil(wait)} s for the rate limit" if wait > 0 else _WORKING
        if text != shown:
            progress.update(task, description=text)
            progress.refresh()
            shown = text

    async def one(source: Source) -> None:
        async with slots:
            try:
                outcome = await _remove_one(source, remover, output, extension)
            except _CancelledAfterWrite as done:
                report.add(done.outcome)
                raise asyncio.CancelledError() from None
        progress.advance(task)
        show_wait()
        report.add(outcome)

    async def show_waits() -> None:
        while True:
            show_wait()
            await asyncio.sleep(0.5)

    waits = asyncio.create_task(show_waits())
    try:
        await asyncio.gather(*(one(source) for source in sources))
    finally:
        waits.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waits


_WORKING = "removing backgrounds"


@contextlib.contextmanager
def _log_to(console: Console, verbose: bool) -> Iterator[None]:
    """The CLI's log lines go through rich on the progress bar's console, so they print above the bar."""
    logger = logging.getLogger("removai_cli")
    handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    previous = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous[0])
        logger.propagate = previous[1]


@contextlib.contextmanager
def _sigint_cancels(task: asyncio.Task[object], interrupted: asyncio.Event) -> Iterator[None]:
    """Ctrl-C cancels `task` (which then reports what it has done) instead of raising KeyboardInterrupt."""
    loop = asyncio.get_running_loop()

    def on_sigint() -> None:
        interrupted.set()
        task.cancel()
        # A second Ctrl-C is the default again: out at once.
        loop.remove_signal_handler(signal.SIGINT)

    try:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    except (NotImplementedError, RuntimeError, ValueError):
        yield  # no signal handlers here (Windows, not the main thread): KeyboardInterrupt is caught in main()
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)


async def _remove(arguments: argparse.Namespace, verbose: bool) -> int:
    if arguments.grpc:
        urls = [path for path in arguments.paths if is_url(path)]
        if urls:
            raise UsageError(f"--grpc takes local files only (the gateway fetches URLs); got {urls[0]}")
    elif not arguments.api_key:
        raise UsageError(f"an API key is needed: --api-key KEY or ${API_KEY_VARIABLE} (or use --grpc)")
    if arguments.skip_existing and arguments.overwrite:
        raise UsageError("--skip-existing keeps existing cut-outs and --overwrite replaces them: choose one")
    # Results go to stdout; the bar and the log lines share it when it is a terminal (rich prints above the
    # bar), else they go to stderr so that `removai remove ... > results.txt` holds the results only.
    results = Console(soft_wrap=True, markup=False, highlight=False, emoji=False)
    screen = results if results.is_terminal else Console(stderr=True, soft_wrap=True, highlight=False)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=screen, disable=arguments.no_progress or not screen.is_terminal, transient=True,
    )
    report = Report(results, as_json=arguments.json)
    task = asyncio.current_task()
    assert task is not None
    interrupted = asyncio.Event()
    with _log_to(screen, verbose), _sigint_cancels(task, interrupted):
        try:
            await _remove_sources(arguments, progress, report)
        except asyncio.CancelledError:
            if not interrupted.is_set():
                raise
            task.uncancel()
    if interrupted.is_set():
        print(report.summary(interrupted=True), file=sys.stderr if arguments.json else sys.stdout)
        return _INTERRUPTED
    print(report.summary(interrupted=False), file=sys.stderr if arguments.json else sys.stdout)
    return 1 if report.failed else 0


_INTERRUPTED = 128 + signal.SIGINT  # what a shell reports for a program ended by Ctrl-C


def _options(arguments: argparse.Namespace) -> Removal:
    """The removal options of the command line, their combinations checked (the contract's rules) before any
    upload."""
    bg_image_url: str | None = None
    bg_image: bytes | None = None
    if arguments.bg_image:
        if arguments.bg_image.startswith(("http://", "https://")):
            bg_image_url = arguments.bg_image
        else:
            try:
                bg_image = Path(arguments.bg_image).read_bytes()
            except OSError as exc:
                raise UsageError(f"--bg-image {arguments.bg_image}: {exc.strerror or exc}") from exc
    given = {option.name: getattr(arguments, option.name) for option in OPTIONS if option.cli is not None}
    try:
        options = RemovalOptions.from_fields({**given, "bg_image_url": bg_image_url}, bg_image=bg_image is not None)
    except OptionError as error:
        raise UsageError(f"{_FLAGS.get(error.option, '--' + error.option)}: {error.message}") from error
    return Removal(options, bg_image)


# The flag that sets each option, to name it in a refusal (bg_image_url: --bg-image takes a file or a URL).
_FLAGS = {option.name: option.cli.flag for option in OPTIONS if option.cli is not None} | {"bg_image_url": "--bg-image"}


async def _remove_sources(arguments: argparse.Namespace, progress: Progress, report: Report) -> None:
    """Checks access, reports missing paths and existing cut-outs, removes the rest."""
    sources = collect_sources(arguments.paths)
    report.total = len(sources.missing) + len(sources.found)
    options = _options(arguments)
    policy = RetryPolicy(max_attempts=arguments.max_attempts)
    output = OutputFolder(arguments.out, overwrite=arguments.overwrite)
    todo = sources.found
    skipped: list[Outcome] = []
    extension = options.options.output_format.extension
    if arguments.skip_existing:
        targets = [output.target(source, extension) for source in todo]
        skipped = [Outcome(source, skipped=target) for source, target in zip(todo, targets) if target.exists()]
        todo = [source for source, target in zip(todo, targets) if not target.exists()]

    async def run_all(remover: Remover) -> None:
        for path in sources.missing:
            report.add(Outcome(Source(label=path), error=RemovalError(
                "not_found", "no such file or folder (URLs must start with http:// or https://)"
            )))
        for outcome in skipped:
            report.add(outcome)
        if todo:
            with progress:
                await remove_all(todo, remover, output, extension,
                                 concurrency=arguments.concurrency, progress=progress, report=report)

    if arguments.grpc:
        async with grpc.aio.insecure_channel(arguments.grpc, options=CHANNEL_OPTIONS) as channel:
            if todo:
                try:
                    await asyncio.wait_for(channel.channel_ready(), timeout=min(arguments.timeout, _CHECK_TIMEOUT_S))
                except TimeoutError:
                    raise UsageError(
                        f"cannot reach the inference service at {arguments.grpc} (is it running?)"
                    ) from None
            await run_all(DirectRemover(pb_grpc.BackgroundRemovalStub(channel), options, policy, arguments.timeout))
    else:
        timeout = aiohttp.ClientTimeout(total=arguments.timeout)
        connector = aiohttp.TCPConnector(limit=arguments.concurrency, resolver=SpecialUseNames())
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            remover = GatewayRemover(session, arguments.url, arguments.api_key, options, policy)
            if todo:
                account = await remover.check_access(min(arguments.timeout, _CHECK_TIMEOUT_S))
                _LOGGER.info("account %s (%s plan) at %s", account.get("id", "?"), account.get("plan", "?"),
                             remover.base_url)
            await run_all(remover)


_CHECK_TIMEOUT_S = 30.0


async def run(argv: Sequence[str] | None = None) -> int:
    """Parses `argv` (default: sys.argv[1:]), runs the command and returns the exit status."""
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        arguments = _parser().parse_args(words)
    except SystemExit as exit_:
        # argparse exits 2 on usage errors and 0 after --help; hand the status back instead.
        return exit_.code if isinstance(exit_.code, int) else 2
    verbose = bool(getattr(arguments, "verbose", False))
    try:
        return await _remove(arguments, verbose)
    except UsageError as error:
        print(f"removai: error: {error}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `removai` console script and `python -m removai_cli`."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(run(argv))
    except KeyboardInterrupt:
        # Ctrl-C where no handler of ours was installed (before the run started, or a second Ctrl-C).
        print("removai: interrupted", file=sys.stderr)
        return _INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
