"""Where an import may read from: the operator's file root, and the network addresses it may fetch.

`ImportPolicy` is built once from the settings and given to every import:

- **Files.** `file://` URLs are off unless the operator names a directory (`JOBSD_IMPORT_FILE_ROOT`). The root may
  not overlap the store, the data plane or any other state directory (`ImportPolicy.from_settings` refuses to
  start). A requested path is resolved — `..` and every symbolic link — and must still be under the root, so a
  link inside the root that points at a state file is refused like the state file itself.
- **Fetches.** An address is refused unless it is a global unicast address: loopback, private (RFC 1918), shared
  (100.64/10), link-local (where cloud metadata services answer: 169.254.169.254), unique-local (fd00::/8, also
  metadata on some clouds), multicast, unspecified, reserved and documentation ranges all are, and so are IPv6
  forms that embed an IPv4 address (mapped `::ffff:a.b.c.d`, 6to4, NAT64, Teredo) that would be refused. Networks
  the operator lists in `JOBSD_IMPORT_ALLOW_NETWORKS` are allowed. The check runs on the addresses a name resolves
  to, inside the HTTP client's resolver (`PolicyResolver`), so the connection is made to exactly the addresses
  that passed; literal addresses in the URL are checked before the request. Redirects are followed here, not by
  the client, at most `max_redirects`, each new URL checked again the same way.
- **One message.** A target that is refused, that does not resolve, that refuses the connection, times out,
  resets, or answers something that is not HTTP, gives one and the same error, so an import cannot be used to scan
  which ports or hosts exist.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from jobsd.domain.redaction import redact_url
from jobsd.errors import InvalidArgument
from jobsd.executors.errors import ExecutionFailed
from jobsd.executors.limits import DEFAULT_IMPORT_LIMITS, ImportLimits

__all__ = [
    "DEFAULT_MAX_REDIRECTS",
    "ImportPolicy",
    "PolicyResolver",
    "client_session",
    "fetch",
    "unreachable",
]

DEFAULT_MAX_REDIRECTS = 5
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# IANA's special-purpose ranges, listed here as well as asked of `is_global`, so no Python version's idea of
# "global" can let one through (192.0.0.0/24 holds Oracle Cloud's metadata address, 100.64/10 Alibaba's).
_SPECIAL_PURPOSE = tuple(
    ipaddress.ip_network(cidr)
    for cidr in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
        "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
        "::/128", "::1/128", "::ffff:0:0/96", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32",
        "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
    )
)  # fmt: skip
_HTTP_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=30, sock_connect=30, sock_read=120)
# Encodings the import undoes itself (`sources`), counting and bounding every byte; never brotli or zstd.
_ACCEPT_ENCODING = "gzip, deflate"


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        if address.teredo is not None:
            return False
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return _public(embedded)
    if any(address in network for network in _SPECIAL_PURPOSE if network.version == address.version):
        return False
    return address.is_global and not (address.is_multicast or address.is_unspecified or address.is_reserved)


def unreachable(url: str) -> ExecutionFailed:
    """The one message for a target that is refused, missing or not answering HTTP, whatever it did."""
    return ExecutionFailed(
        f"Could not fetch {redact_url(url)}: no address of the host could be reached over HTTP "
        "(it may not exist, not answer, or be an address imports may not use)"
    )


def _lexically_under(path: Path, root: Path) -> bool:
    return Path(os.path.normpath(path)).is_relative_to(root)


@dataclass(frozen=True, slots=True)
class ImportPolicy:
    """What imports may read. The default reads no file and fetches only from public addresses."""

    file_root: Path | None = None
    allow_networks: tuple[IPNetwork, ...] = ()
    max_redirects: int = DEFAULT_MAX_REDIRECTS

    @classmethod
    def build(
        cls,
        *,
        file_root: str | Path | None = None,
        allow_networks: Iterable[str] = (),
        max_redirects: int = DEFAULT_MAX_REDIRECTS,
        state_paths: Sequence[Path] = (),
    ) -> ImportPolicy:
        """The policy; InvalidArgument when the file root overlaps one of `state_paths` (the store, the data
        plane...) or is not a directory."""
        root: Path | None = None
        if file_root:
            root = Path(file_root).expanduser().resolve()
            if not root.is_dir():
                raise InvalidArgument("import_file_root", f"{file_root} is not a directory")
            for state in state_paths:
                resolved = Path(state).expanduser().resolve()
                if resolved.is_relative_to(root) or root.is_relative_to(resolved):
                    raise InvalidArgument(
                        "import_file_root",
                        f"{file_root} overlaps {state}, where jobsd keeps its state: choose a directory that holds "
                        "only files to import",
                    )
        networks = tuple(ipaddress.ip_network(n, strict=False) for n in allow_networks)
        return cls(file_root=root, allow_networks=networks, max_redirects=max_redirects)

    # -- addresses

    def allows(self, address: IPAddress) -> bool:
        candidates: list[IPAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address):
            embedded = _embedded_ipv4(address)
            if embedded is not None:
                candidates.append(embedded)
        if any(c in net for c in candidates for net in self.allow_networks if c.version == net.version):
            return True
        return _public(address)

    def check_url(self, url: str, *, requested: str | None = None) -> URL:
        """The URL to request, if its scheme is http(s) and its host, when a literal address, is allowed.

        `requested`: the URL the job asked for, named in the error when `url` is where it redirected to."""
        shown = redact_url(requested or url)
        try:
            parsed = URL(url)
        except ValueError:
            raise ExecutionFailed(f"Could not fetch {shown}: it is not a valid URL") from None
        if parsed.scheme not in ("http", "https") or not parsed.raw_host:
            what = "redirects to a URL that is not" if requested else "must be"
            raise ExecutionFailed(f"Could not fetch {shown}: the URL {what} http:// or https://")
        try:
            literal = ipaddress.ip_address(parsed.raw_host.strip("[]").split("%", 1)[0])
        except ValueError:
            return parsed  # a name: checked by PolicyResolver on every address it resolves to
        if not self.allows(literal):
            raise unreachable(requested or url)
        return parsed

    # -- files

    def file_path(self, url: str) -> Path:
        """The file a file:// URL names, if it lies under the import root once resolved."""
        shown = redact_url(url)
        if self.file_root is None:
            raise ExecutionFailed(
                f"Could not read {shown}: file imports are off on this server (an operator turns them on for one "
                "directory with JOBSD_IMPORT_FILE_ROOT)"
            )
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ExecutionFailed(f"Could not read {shown}: file:// URLs must name a local path (file:///path/to/file)")
        requested = Path(unquote(parts.path))
        outside = ExecutionFailed(f"Could not read {shown}: file imports may only read the server's import directory")
        if not requested.is_absolute() or not _lexically_under(requested, self.file_root):
            raise outside
        try:
            resolved = requested.resolve(strict=True)
        except (OSError, RuntimeError):
            raise ExecutionFailed(f"Could not read {shown}: no such file") from None
        # After resolving every link: a link inside the root that leads out of it is refused.
        if not resolved.is_relative_to(self.file_root):
            raise outside
        if not resolved.is_file():
            raise ExecutionFailed(f"Could not read {shown}: no such file")
        return resolved


class PolicyResolver(AbstractResolver):
    """Resolves names with the system resolver and keeps only the addresses the policy allows.

    aiohttp connects to exactly the addresses a resolver returns, so the address checked is the one connected to
    (no second lookup a DNS answer could change in between)."""

    def __init__(self, policy: ImportPolicy) -> None:
        self._policy = policy
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        resolved = await self._inner.resolve(host, port, family)
        allowed = [entry for entry in resolved if self._policy.allows(ipaddress.ip_address(entry["host"]))]
        if not allowed:
            raise OSError(f"{host}: no address imports may use")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def client_session(policy: ImportPolicy) -> aiohttp.ClientSession:
    """An HTTP client for imports: it resolves through the policy, ignores proxy variables and leaves the body
    encoded (the import decodes it, within its limits)."""
    connector = aiohttp.TCPConnector(resolver=PolicyResolver(policy))
    return aiohttp.ClientSession(
        connector=connector,
        timeout=_HTTP_TIMEOUT,
        trust_env=False,
        auto_decompress=False,
        headers={"Accept-Encoding": _ACCEPT_ENCODING},
    )


async def fetch(
    session: aiohttp.ClientSession, url: str, policy: ImportPolicy, limits: ImportLimits = DEFAULT_IMPORT_LIMITS
) -> aiohttp.ClientResponse:
    """GET `url`, following redirects ourselves so every hop is checked; the final response (not yet read).

    Each hop's status and headers must arrive within the rate window (`limits.rate_window_seconds`), all of them
    within the download's time limit; a hop that does not is a target that does not answer (the one message).
    `session` must come from `client_session(policy)`. The caller closes the response."""
    target = policy.check_url(url)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.timeout_seconds
    for _ in range(policy.max_redirects + 1):
        try:
            async with asyncio.timeout(min(deadline - loop.time(), limits.rate_window_seconds)):
                response = await session.get(target, allow_redirects=False, timeout=_HTTP_TIMEOUT)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            raise unreachable(url) from None
        if response.status not in _REDIRECTS:
            return response
        location = response.headers.get("Location")
        response.release()
        if not location:
            raise ExecutionFailed(f"Could not fetch {redact_url(url)}: HTTP {response.status} without a Location")
        try:
            following = str(target.join(URL(location)))
        except ValueError:
            raise ExecutionFailed(f"Could not fetch {redact_url(url)}: it redirects to an invalid URL") from None
        target = policy.check_url(following, requested=url)
    raise ExecutionFailed(f"Could not fetch {redact_url(url)}: more than {policy.max_redirects} redirects")
