"""Identifiers the executors hand out: query ids (ULIDs, 26 characters).

Data-source ids are not random: `jobsd.domain.model.datasource_id_for(workspace_id, name)`, shared with the service.
"""

from __future__ import annotations

import secrets

from jobsd.domain.clock import Clock, to_micros

__all__ = ["new_query_id"]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_query_id(clock: Clock) -> str:
    """A ULID: 48 bits of milliseconds (so ids sort by creation time, as Tinybird's do) and 80 random bits."""
    value = ((to_micros(clock.now()) // 1000) << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))
