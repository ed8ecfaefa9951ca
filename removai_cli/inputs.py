"""What `removai remove` reads (files, folders, http(s) URLs) and where each cut-out is written."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

_LOGGER = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class UsageError(Exception):
    """A command line that cannot run as given; the CLI exits with status 2."""


@dataclass(frozen=True)
class Source:
    """One image to process: a local file or an http(s) URL; `label` is how the user named it."""

    label: str
    path: Path | None = None
    url: str | None = None

    @property
    def stem(self) -> str:
        """The output's file name without extension: the input's own stem."""
        if self.path is not None:
            return self.path.stem or "image"
        name = PurePosixPath(unquote(urlsplit(self.url or "").path)).stem
        return _UNSAFE_NAME.sub("_", name).strip("._") or "image"


def is_url(argument: str) -> bool:
    return argument.lower().startswith(("http://", "https://"))


def collect_sources(arguments: Iterable[str]) -> list[Source]:
    """Files as given, folders searched recursively for .jpg/.jpeg/.png/.webp, URLs as given; no duplicates."""
    sources: list[Source] = []
    seen: set[str] = set()

    def add(source: Source, key: str) -> None:
        if key not in seen:
            seen.add(key)
            sources.append(source)

    for argument in arguments:
        if is_url(argument):
            add(Source(label=argument, url=argument), argument)
            continue
        path = Path(argument)
        if path.is_dir():
            found = sorted(
                candidate for candidate in path.rglob("*")
                if candidate.suffix.lower() in IMAGE_SUFFIXES and candidate.is_file()
            )
            if not found:
                _LOGGER.warning("%s: no .jpg, .jpeg, .png or .webp files in this folder", argument)
            for candidate in found:
                add(Source(label=str(candidate), path=candidate), str(candidate.resolve()))
        elif path.is_file():
            # A file named explicitly is sent whatever its suffix: the service decides the type by its bytes.
            add(Source(label=argument, path=path), str(path.resolve()))
        else:
            raise UsageError(f"{argument}: no such file or folder (URLs must start with http:// or https://)")
    if not sources:
        raise UsageError("no images to process")
    return sources


class OutputFolder:
    """Writes cut-outs as `<folder>/<stem>.<ext>`; an existing name gets `-1`, `-2`, ... unless overwriting."""

    def __init__(self, folder: Path, *, overwrite: bool) -> None:
        self.folder = folder
        self.overwrite = overwrite
        # Names handed out in this run: two inputs with one stem never replace each other, even with --overwrite.
        self._claimed: set[str] = set()
        self._lock = threading.Lock()

    def write(self, stem: str, extension: str, data: bytes) -> Path:
        """Blocking (run it in a thread); returns the path written."""
        self.folder.mkdir(parents=True, exist_ok=True)
        number = 0
        # Writes are local and short; one at a time keeps the naming simple and race-free.
        with self._lock:
            while True:
                name = f"{stem}.{extension}" if number == 0 else f"{stem}-{number}.{extension}"
                number += 1
                path = self.folder / name
                if name in self._claimed:
                    continue
                if self.overwrite:
                    partial = path.with_name(f".{name}.partial")
                    partial.write_bytes(data)
                    partial.replace(path)
                else:
                    try:
                        # Exclusive creation: a file that exists (or appears meanwhile) is never replaced.
                        with path.open("xb") as handle:
                            handle.write(data)
                    except FileExistsError:
                        continue
                self._claimed.add(name)
                return path
