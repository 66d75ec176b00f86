"""`secantusd-py` with the TTL monitor's period honoured: `python wire_server_launch.py SECONDS ARGS...` runs the
wire server's own command line (`secantus.cli:main`, ARGS as `secantusd-py` takes them) with its monitor sweeping
every SECONDS (0: never, as mongod's `ttlMonitorEnabled=false`).

Why not `secantusd.toml`: SecantusDB 0.7.0b3 accepts `[storage] ttl_sweep_seconds` there ("loaded config from
...") but `secantus.cli.main` never hands it to the server, which keeps sweeping every 60 s (docs/scaling.md, the
differences table). Run as a script by `tests/support/wire_server.py`, in the server's own process; never
imported by jobsd or the tests.
"""

from __future__ import annotations

import functools
import sys

import secantus.cli  # type: ignore[import-untyped]
from secantus.server import SecantusDBServer  # type: ignore[import-untyped]


def main() -> int:
    seconds = float(sys.argv[1])
    secantus.cli.SecantusDBServer = functools.partial(SecantusDBServer, ttl_sweep_seconds=seconds)
    code: int = secantus.cli.main(sys.argv[2:])
    return code


if __name__ == "__main__":
    sys.exit(main())
