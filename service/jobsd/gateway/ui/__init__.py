"""The dashboard: a live jobs page served by the gateway at `/`, its assets under `/ui/`.

Static files shipped in this package (hand-written ES modules and CSS, no build step, nothing from a CDN), read
once at start. The page talks only to the REST API of the same origin, with the token in an `Authorization`
header (never in a URL or a cookie). Every response of the dashboard carries a strict Content-Security-Policy (no
inline script or style, nothing from another origin, no framing) and the headers that go with it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

__all__ = ["SECURITY_HEADERS", "DashboardRoutes"]

SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    content_type: str
    etag: str


def _load_assets() -> dict[str, _Asset]:
    assets: dict[str, _Asset] = {}
    for entry in (resources.files(__package__) / "static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if not entry.is_file() or suffix not in _CONTENT_TYPES:
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        assets[entry.name] = _Asset(body, _CONTENT_TYPES[suffix], etag)
    if "index.html" not in assets:
        raise RuntimeError("the dashboard's assets are missing from the installed package (static/index.html)")
    return assets


class DashboardRoutes:
    """`GET /` (the page) and `GET /ui/{name}` (its modules, style sheet and icon)."""

    def __init__(self) -> None:
        self._assets = _load_assets()

    @property
    def asset_names(self) -> list[str]:
        return sorted(self._assets)

    def install(self, app: web.Application) -> None:
        app.router.add_get("/", self.index, name="dashboard")
        app.router.add_get("/ui/{name}", self.asset, name="dashboard_asset")

    def _serve(self, request: web.Request, asset: _Asset) -> web.Response:
        # Revalidated on every load (no-cache + ETag): a new version of the package is picked up at once, and an
        # unchanged asset costs a 304.
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache", "ETag": asset.etag}
        if request.headers.get("If-None-Match") == asset.etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=asset.body, headers={**headers, "Content-Type": asset.content_type})

    async def index(self, request: web.Request) -> web.Response:
        return self._serve(request, self._assets["index.html"])

    async def asset(self, request: web.Request) -> web.Response:
        asset = self._assets.get(request.match_info["name"])
        if asset is None:
            raise web.HTTPNotFound()
        return self._serve(request, asset)
