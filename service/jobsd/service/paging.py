"""Page sizes and opaque page tokens (keyset cursors) of the list RPCs."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from jobsd.domain.clock import from_micros
from jobsd.errors import InvalidArgument

__all__ = ["MAX_PAGE", "checked_page_size", "decode_cursor", "encode_cursor"]

MAX_PAGE = 100


def checked_page_size(value: int, field: str = "page_size") -> int:
    if value == 0:
        return MAX_PAGE
    if not 1 <= value <= MAX_PAGE:
        raise InvalidArgument(field, f"must be between 1 and {MAX_PAGE}, got {value}")
    return value


def encode_cursor(*parts: object) -> str:
    return base64.urlsafe_b64encode("|".join(str(p) for p in parts).encode()).decode().rstrip("=")


_BAD_TOKEN = "is not a page token this server issued"
# Cursor times must be real instants (year 1..9999); anything else is a forged or corrupted token.
_MAX_CURSOR_MICROS = 253_402_300_799_999_999


def decode_cursor(token: str, arity: int) -> tuple[datetime, list[str]]:
    """(the cursor's instant, the remaining parts) or InvalidArgument naming page_token."""
    if len(token) > 1024:
        raise InvalidArgument("page_token", _BAD_TOKEN)
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidArgument("page_token", _BAD_TOKEN) from None
    parts = raw.split("|")
    if len(parts) != arity or not parts[0].lstrip("-").isdigit():
        raise InvalidArgument("page_token", _BAD_TOKEN)
    micros = int(parts[0])
    if not -62_135_596_800_000_000 <= micros <= _MAX_CURSOR_MICROS:
        raise InvalidArgument("page_token", _BAD_TOKEN)
    return from_micros(micros), parts[1:]
