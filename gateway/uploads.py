"""Reads multipart/form-data as a stream, refusing a file over the limit as soon as it passes it."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import BodyPartReader, web

from gateway.errors import InvalidRequest

_CHUNK_BYTES = 256 * 1024
_MAX_FIELD_BYTES = 8 * 1024
# Room for the multipart boundaries and text fields on top of the files themselves.
_ENVELOPE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class UploadedFile:
    filename: str
    content: bytes


@dataclass
class MultipartForm:
    fields: dict[str, str] = field(default_factory=dict)
    files: list[UploadedFile] = field(default_factory=list)


async def _read_file(part: BodyPartReader, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(_CHUNK_BYTES):
        size += len(chunk)
        if size > max_bytes:
            raise InvalidRequest(f"{part.name}: the file is larger than {max_bytes // (1024 * 1024)} MB")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_form(
    request: web.Request, *, file_field: str, max_files: int, max_file_bytes: int
) -> MultipartForm:
    """The form's text fields and up to max_files files named file_field, each at most max_file_bytes."""
    if request.content_type != "multipart/form-data":
        raise InvalidRequest("send the image as multipart/form-data")
    declared = request.content_length
    if declared is not None and declared > max_files * max_file_bytes + _ENVELOPE_BYTES:
        raise InvalidRequest(f"the upload is larger than {max_file_bytes // (1024 * 1024)} MB per file")
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError) as exc:
        raise InvalidRequest("the multipart body is malformed") from exc
    form = MultipartForm()
    while True:
        try:
            part = await reader.next()
        except ValueError as exc:
            raise InvalidRequest("the multipart body is malformed") from exc
        if part is None:
            break
        if not isinstance(part, BodyPartReader) or not part.name:
            raise InvalidRequest("nested or unnamed multipart parts are not accepted")
        if part.name == file_field:
            if len(form.files) >= max_files:
                raise InvalidRequest(f"at most {max_files} files per request")
            form.files.append(UploadedFile(part.filename or "", await _read_file(part, max_file_bytes)))
        elif part.filename is not None:
            raise InvalidRequest(f"unexpected file field {part.name!r}; send the image as {file_field!r}")
        else:
            raw = await part.read_chunk(_MAX_FIELD_BYTES + 1)
            if len(raw) > _MAX_FIELD_BYTES or await part.read_chunk(1):
                raise InvalidRequest(f"{part.name}: value too long")
            if part.name in form.fields:
                raise InvalidRequest(f"{part.name}: given twice")
            form.fields[part.name] = raw.decode("utf-8", errors="replace")
    return form
