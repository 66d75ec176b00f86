"""The dashboard's files as the gateway serves them: at `/` and `/ui/`, from both gateways, with strict headers.

What the page does is tested in a real browser (tests/browser); here: what is served, and that it can run under
its own Content-Security-Policy (no inline script or style anywhere, nothing from another origin).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from jobsd.gateway.ui import SECURITY_HEADERS, DashboardRoutes

from .support import Gateway

ASSETS = DashboardRoutes().asset_names


class _Markup(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inline_scripts = 0
        self.style_attributes = 0
        self.style_elements = 0
        self.references: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script" and not values.get("src"):
            self.inline_scripts += 1
        if tag == "style":
            self.style_elements += 1
        if "style" in values:
            self.style_attributes += 1
        if any(name.startswith("on") for name in values):
            self.inline_scripts += 1
        self.references += [v for k, v in values.items() if k in ("src", "href") and v]


def test_the_headers_forbid_framing_inline_code_and_other_origins() -> None:
    csp = SECURITY_HEADERS["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in csp and "http" not in csp
    assert SECURITY_HEADERS["X-Frame-Options"] == "DENY"
    assert SECURITY_HEADERS["X-Content-Type-Options"] == "nosniff"
    assert SECURITY_HEADERS["Referrer-Policy"] == "no-referrer"


async def test_the_page_is_served_at_the_root_by_both_gateways(any_gw: Gateway) -> None:
    reply = await any_gw.get("/", anonymous=True)

    assert reply.status == 200
    assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
    for name, value in SECURITY_HEADERS.items():
        assert reply.headers[name] == value
    assert '<script type="module" src="/ui/app.js">' in reply.body


async def test_the_markup_has_no_inline_script_or_style_and_loads_only_its_own_files(gw: Gateway) -> None:
    markup = _Markup()
    markup.feed((await gw.get("/", anonymous=True)).body)

    assert (markup.inline_scripts, markup.style_elements, markup.style_attributes) == (0, 0, 0)
    assert markup.references, "the page references its assets"
    for reference in markup.references:
        assert reference.startswith(("/ui/", "#")), reference
        if reference.startswith("/ui/"):
            assert reference.removeprefix("/ui/") in ASSETS


@pytest.mark.parametrize("name", ASSETS)
async def test_every_asset_is_served_with_its_type_and_the_same_headers(gw: Gateway, name: str) -> None:
    reply = await gw.get(f"/ui/{name}", anonymous=True)

    assert reply.status == 200
    expected = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml", "html": "text/html"}
    assert reply.headers["Content-Type"].startswith(expected[name.rpartition(".")[2]])
    assert reply.headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    if name.endswith(".js"):
        # Modules import only their siblings, by relative path; nothing is fetched from elsewhere.
        imports = re.findall(r'^import .* from "([^"]+)";$', reply.body, flags=re.M)
        assert all(i.startswith("./") and i.removeprefix("./") in ASSETS for i in imports), imports
        assert "http://" not in reply.body.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in reply.body
        assert "innerHTML" not in reply.body and "eval(" not in reply.body
        assert "localStorage" not in reply.body and "document.cookie" not in reply.body


async def test_an_unchanged_asset_is_a_304(gw: Gateway) -> None:
    first = await gw.get("/ui/app.js", anonymous=True)
    again = await gw.get("/ui/app.js", anonymous=True, headers={"If-None-Match": first.headers["ETag"]})

    assert first.headers["Cache-Control"] == "no-cache"
    assert again.status == 304 and again.body == ""


@pytest.mark.parametrize("path", ["/ui/missing.js", "/ui/../settings.py", "/ui/", "/ui/static"])
async def test_anything_else_under_ui_is_a_json_404(gw: Gateway, path: str) -> None:
    reply = await gw.get(path, anonymous=True)

    assert reply.status == 404
    assert set(reply.body) == {"error", "documentation"}


async def test_the_token_is_never_needed_to_load_the_page(gw: Gateway) -> None:
    # The page is public; everything it shows comes from the API, which asks for the token.
    page = await gw.get("/", anonymous=True)
    api = await gw.get("/v0/jobs", anonymous=True)

    assert page.status == 200
    assert api.status == 403
