"""The origin `job_url`, `next` and the regions' hosts are built on — never taken from an untrusted Host header.

A Host header is whatever the client sends: built into links it lets anyone make the gateway hand out URLs that
point elsewhere (to a phishing host, to a cache it poisons). So, in order:

1. `JOBSD_PUBLIC_URL` when set (the address clients use, e.g. behind a proxy or a load balancer);
2. the request's own `scheme://Host` when that Host is one of `JOBSD_TRUSTED_HOSTS` (`host` or `host:port`);
3. otherwise this gateway's own address: the local address of the connection the request came in on (the
   interface and port the client reached, which the client cannot choose), e.g. `http://127.0.0.1:8080`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from aiohttp import web

__all__ = ["PublicOrigin"]


def _bracketed(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


class PublicOrigin:
    def __init__(self, public_url: str, trusted_hosts: Iterable[str] = ()) -> None:
        self._public_url = public_url.strip().rstrip("/")
        self._trusted = frozenset(host.strip().lower() for host in trusted_hosts if host.strip())

    def _trusted_host(self, request: web.Request) -> str | None:
        host = request.headers.get("Host", "").strip()
        if not host or not self._trusted:
            return None
        lowered = host.lower()
        name = lowered.rsplit(":", 1)[0] if not lowered.endswith("]") else lowered
        return host if lowered in self._trusted or name in self._trusted else None

    def for_request(self, request: web.Request) -> str:
        if self._public_url:
            return self._public_url
        trusted = self._trusted_host(request)
        if trusted is not None:
            return f"{request.scheme}://{trusted}"
        local = request.transport.get_extra_info("sockname") if request.transport is not None else None
        if isinstance(local, tuple) and len(local) >= 2:
            return f"{request.scheme}://{_bracketed(str(local[0]))}:{int(local[1])}"
        return f"{request.scheme}://127.0.0.1"
