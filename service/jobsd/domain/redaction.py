"""What of an import URL may be shown: its credentials never are.

A job's `url` is kept as given (the worker that runs the import needs it), but every rendering of it — API reads,
events, error messages, logs — shows `redact_url(url)`: the `user:password@` part becomes `***@`, and the values of
query or fragment parameters whose names say they are secrets (token, key, signature, password, credential, auth,
session: presigned links carry their credentials that way) become `***`. `scrub(text, url)` removes those same
secrets from free text such as a worker's error message.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["MASK", "redact_url", "scrub", "url_secrets"]

MASK = "***"
# A parameter name that holds a credential: access_token, api_key, X-Amz-Signature, X-Amz-Credential, sig, pwd...
_SECRET_NAME = re.compile(r"token|key|secret|sig|passw|pwd|auth|credential|session", re.IGNORECASE)
# scheme://userinfo@ : userinfo is everything up to the last "@" before the path.
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#]*)@")
# Secrets shorter than this are not searched for in free text: they would match ordinary words.
_MIN_SCRUBBED = 4


def _redact_pairs(text: str) -> str:
    pieces = []
    for piece in text.split("&"):
        name, sep, _ = piece.partition("=")
        pieces.append(f"{name}={MASK}" if sep and _SECRET_NAME.search(unquote(name)) else piece)
    return "&".join(pieces)


def redact_url(url: str) -> str:
    """The URL with its credentials masked; anything else is kept as written."""
    if "@" not in url and "?" not in url and "#" not in url:
        return url  # no userinfo, query or fragment: nothing to mask (every job's encode asks)
    masked = _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", url, count=1)
    head, hash_sign, fragment = masked.partition("#")
    base, question, query = head.partition("?")
    if question:
        base += question + _redact_pairs(query)
    if hash_sign:
        base += hash_sign + _redact_pairs(fragment)
    return base


def url_secrets(url: str) -> list[str]:
    """The secret parts of the URL (userinfo and its decoded password, secret parameter values), longest first."""
    found: set[str] = set()
    userinfo = _USERINFO.match(url)
    if userinfo:
        info = userinfo.group("userinfo")
        found.update({info, unquote(info)})
        _, colon, password = info.partition(":")
        if colon:
            found.update({password, unquote(password)})
    head, _, fragment = url.partition("#")
    _, _, query = head.partition("?")
    for text in (query, fragment):
        for piece in text.split("&"):
            name, sep, value = piece.partition("=")
            if sep and _SECRET_NAME.search(unquote(name)):
                found.update({value, unquote(value)})
    return sorted((s for s in found if len(s) >= _MIN_SCRUBBED), key=len, reverse=True)


def scrub(text: str, url: str | None) -> str:
    """`text` with `url` shown redacted and every secret of it masked."""
    if not url or not text:
        return text
    secrets = url_secrets(url)
    if not secrets:
        return text
    text = text.replace(url, redact_url(url))
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text
