"""The gRPC edge's half of the error mapping: a `JobsdError`'s canonical code name -> `grpc.StatusCode`.

The errors carry their code as data (`jobsd.errors`); this is the one place the name becomes gRPC's enum.
"""

from __future__ import annotations

import grpc

from jobsd.errors import JobsdError

__all__ = ["grpc_status"]

_BY_NAME: dict[str, grpc.StatusCode] = {code.name: code for code in grpc.StatusCode}


def grpc_status(error: JobsdError) -> grpc.StatusCode:
    """The status code a servicer aborts with for `error` (UNKNOWN for a code name gRPC does not have)."""
    return _BY_NAME.get(error.code_name, grpc.StatusCode.UNKNOWN)
