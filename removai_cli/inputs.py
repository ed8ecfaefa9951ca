"""What `removai remove` reads (files, folders, http(s) URLs) and where each cut-out is written."""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath
from urllib.parse import unquote, urlsplit

_LOGGER = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class UsageError(Exception):
    """A command line that cannot run as given; the CLI exits with status 2."""


@dataclass(frozen=True)
class Source:
    """One image to process: a local file or an http(s) URL; `label` is how the user named it.

    `folder` is where its cut-out goes relative to --out: the file's subfolder inside the folder argument it was
    found in (so photos/a/x.jpg and photos/b/x.jpg do not collide), empty for files and URLs named directly.
    """

    label: str
    path: Path | None = None
    url: str | None = None
    folder: PurePath = field(default_factory=PurePath)

    @property
    def stem(self) -> str:
        """The output's file name without extension: the input's own stem."""
        if self.path is not None:
            return self.path.stem or "image"
        name = PurePosixPath(unquote(urlsplit(self.url or "").path)).stem
        return _UNSAFE_NAME.sub("_", name).strip("._") or "image"


@dataclass(frozen=True)
class Sources:
    """What the PATH arguments name: the images found, and the arguments that name nothing (reported as failed)."""

    found: list[Source]
    missing: list[str]


def is_url(argument: str) -> bool:
    return argument.lower().startswith(("http://", "https://"))


def collect_sources(arguments: Iterable[str]) -> Sources:
    """Files as given, folders searched recursively for .jpg/.jpeg/.png/.webp, URLs as given; no duplicates."""
    sources: list[Source] = []
    missing: list[str] = []
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
                folder = candidate.parent.relative_to(path)
                add(Source(label=str(candidate), path=candidate, folder=folder), str(candidate.resolve()))
        elif path.is_file():
            # A file named explicitly is sent whatever its suffix: the service decides the type by its bytes.
            add(Source(label=argument, path=path), str(path.resolve()))
        else:
            missing.append(argument)
    if not sources and not missing:
        raise UsageError("no images to process: name a file, a folder with .jpg, .jpeg, .png or .webp files, or an "
                         "http(s) URL")
    return Sources(sources, missing)


class OutputFolder:
    """Writes cut-outs as `<folder>/<subfolder>/<stem>.<ext>`; an existing name gets `-1`, `-2`, ... unless
    overwriting. A file appears whole or not at all (written aside, then linked or renamed into place), so an
    interrupted run never leaves a truncated cut-out that --skip-existing would take for a finished one."""

    def __init__(self, folder: Path, *, overwrite: bool) -> None:
        self.folder = folder
        self.overwrite = overwrite
        # Names handed out in this run: two inputs with one stem never replace each other, even with --overwrite.
        self._claimed: set[Path] = set()
        self._lock = threading.Lock()

    def target(self, source: Source, extension: str) -> Path:
        """Where the cut-out of `source` goes when nothing is in the way (what --skip-existing looks for)."""
        return self.folder / source.folder / f"{source.stem}.{extension}"

    def write(self, source: Source, extension: str, data: bytes) -> Path:
        """Blocking (run it in a thread); returns the path written."""
        first = self.target(source, extension)
        first.parent.mkdir(parents=True, exist_ok=True)
        partial = first.with_name(f".{first.name}.{os.getpid()}.{threading.get_ident()}.partial")
        partial.write_bytes(data)
        try:
            number = 0
            # Writes are local and short; one at a time keeps the naming simple and race-free.
            with self._lock:
                while True:
                    path = first if number == 0 else first.with_name(f"{first.stem}-{number}{first.suffix}")
                    number += 1
                    if path in self._claimed:
                        continue
                    if self.overwrite:
                        partial.replace(path)
                    else:
                        try:
                            # A hard link never replaces: a file that exists (or appears meanwhile) is kept.
                            os.link(partial, path)
                        except FileExistsError:
                            continue
                        except OSError:
                            # A file system without hard links (FAT, some network shares): exclusive creation.
                            try:
                                with path.open("xb") as handle:
                                    handle.write(data)
                            except FileExistsError:
                                continue
                    self._claimed.add(path)
                    return path
        finally:
            partial.unlink(missing_ok=True)
