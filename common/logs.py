"""Logging for both services: the request id in every line (a context variable), JSON lines when asked, and
no URL's password in any line (common.credentials masks it, tracebacks included)."""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from typing import Any

from common.credentials import mask_urls_in

# Set per request (HTTP in the gateway, gRPC in the inference service); carried from one to the other.
REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class MaskingFormatter(logging.Formatter):
    """A plain formatter whose lines carry no URL password or credential parameter (masked to ***): the last
    guard for a URL that code, a library or an exception's message puts in a line unmasked."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_urls_in(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id (and the traceback, if any); URLs in
    the message and the traceback masked as MaskingFormatter masks them."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": mask_urls_in(record.getMessage()),
            "request_id": getattr(record, "request_id", "-"),
        }
        if record.exc_info:
            entry["exception"] = mask_urls_in(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def masking_handler(format_: str) -> logging.Handler:
    """A stderr handler with MaskingFormatter(format_), for the command-line tools' logging.basicConfig."""
    handler = logging.StreamHandler()
    handler.setFormatter(MaskingFormatter(format_))
    return handler


def configure_logging(level: str, json_lines: bool) -> None:
    """Root logging for a service process; call once from its __main__."""
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(
        JsonFormatter()
        if json_lines
        else MaskingFormatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)
