"""`X-Twilio-Signature`: Twilio's HMAC-SHA1 request signature (pure functions).

Twilio signs a request with the account's auth token: HMAC-SHA1 over the full URL it requested
(scheme, host, path and query string), followed -- for form POSTs only -- by each parameter's
name and value in name order; the header carries the digest in base64. A Media Streams
websocket upgrade is a GET with no body, so only the URL counts: `wss://host/path?query`, as
written in the TwiML `<Stream url>`.

Like Twilio's own validators, a signature is accepted for the URL with or without its port
(with no port, also with the scheme's default one), since proxies add or drop it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

DEFAULT_PORTS = {"https": 443, "wss": 443, "http": 80, "ws": 80}


def compute_signature(auth_token: str, url: str, params: Mapping[str, str] | None = None) -> str:
    """The base64 signature Twilio sends for a request to `url` (with form `params`, if any)."""
    data = url + "".join(name + value for name, value in sorted((params or {}).items()))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def url_variants(url: str) -> list[str]:
    """`url` without its port, and with its port (the scheme's default one when it has none)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal goes back into brackets
        host = f"[{host}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    without_port = urlunsplit(parts._replace(netloc=prefix + host))
    with_port = without_port if port is None else urlunsplit(parts._replace(netloc=f"{prefix}{host}:{port}"))
    return list(dict.fromkeys((url, without_port, with_port)))


def is_valid_signature(auth_token: str, url: str, signature: str | None) -> bool:
    """Whether `signature` (the header's value) signs `url` with `auth_token`; constant time."""
    if not signature or not auth_token:
        return False
    given = signature.strip().encode()
    matches = [
        hmac.compare_digest(compute_signature(auth_token, u).encode(), given) for u in url_variants(url)
    ]
    return any(matches)


def stream_url(host: str, raw_path: bytes, query_string: bytes, public_url: str | None = None) -> str:
    """The URL Twilio signed for this upgrade request.

    `public_url` (the `<Stream url>` as configured, for servers behind a proxy that changes the
    scheme, host or path) wins, taken as is when it has a query string; otherwise the request's
    query string is appended to it, or to `wss://` + the Host header + the raw request path.
    """
    if public_url and "?" in public_url:
        return public_url
    base = public_url or f"wss://{host}{raw_path.decode('latin-1')}"
    query = query_string.decode("latin-1")
    return f"{base}?{query}" if query else base
