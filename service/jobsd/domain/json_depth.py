"""How deeply nested a JSON text may be before jobsd parses it (`JOBSD_MAX_JSON_DEPTH`).

Python's JSON parser recurses once per level, so a line of ten thousand `[` fails with RecursionError deep inside
it; every JSON input (REST bodies, NDJSON lines, Struct fields) is measured first and refused with a clear error
instead. Measuring is cheap for ordinary input: a text with fewer brackets than the limit cannot be deeper, and
only texts with more are scanned (strings skipped, so brackets inside them do not count).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["DEFAULT_MAX_JSON_DEPTH", "json_depth_within", "value_depth_within"]

DEFAULT_MAX_JSON_DEPTH = 64
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]')


def json_depth_within(text: str | bytes, limit: int) -> bool:
    """True when no value in the JSON `text` is nested more than `limit` arrays/objects deep."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if text.count("[") + text.count("{") <= limit:
        return True
    depth = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > limit:
                return False
        elif token in ("]", "}"):
            depth -= 1
    return True


def value_depth_within(value: Any, limit: int) -> bool:
    """The same bound for a value already decoded (e.g. a protobuf Struct as a dict), without recursing in Python."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth + 1 > limit:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True
