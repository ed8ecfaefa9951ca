"""Strict parsing of the integers that arrive as text (query strings, headers, form fields): ASCII digits only."""

from __future__ import annotations

import re

from gateway.errors import InvalidRequest

# str.isdigit() and int() accept far more than a client means by "a number": "²" passes isdigit() and then
# int() raises, full-width and Arabic-Indic digits convert silently, and int() also takes " 1", "+1" and "1_000".
# A plain ASCII pattern, bounded in length, so int() below can neither raise nor chew on a 4,300-digit string
# (CPython's limit, past which int() raises ValueError as well).
MAX_DIGITS = 18
_ASCII_DIGITS = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}")


def ascii_int(raw: str | None) -> int | None:
    """The value of `raw` if it is 1 to MAX_DIGITS ASCII digits and nothing else, else None; never raises."""
    if raw is None or not _ASCII_DIGITS.fullmatch(raw):
        return None
    return int(raw)


def int_param(raw: str | None, *, name: str, default: int, minimum: int, maximum: int) -> int:
    """An integer parameter from a query string, header or form field: `default` when absent, else ASCII
    digits within [minimum, maximum], else 400 invalid_request naming the parameter."""
    if raw is None:
        return default
    value = ascii_int(raw)
    if value is None or not minimum <= value <= maximum:
        raise InvalidRequest(f"{name}: must be an integer from {minimum} to {maximum}")
    return value


def retry_after_seconds(raw: str | None) -> int | None:
    """A receiver's Retry-After as whole seconds if it is delta-seconds in ASCII digits (surrounding spaces
    allowed, as HTTP allows them around field values); None for anything else, HTTP-dates included."""
    if raw is None:
        return None
    return ascii_int(raw.strip(" \t"))
