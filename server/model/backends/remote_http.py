"""What the remote speech backends (`openai-asr`, `openai-tts`) share: their connection
options, the pooled HTTP client, and the mapping of HTTP failures to `BackendError`.

Failures, as `server/model/backends/openai_llm.py` maps them:
- refused or timed-out connections, HTTP 408/409/425/429/5xx and bodies that break off are
  `retryable` (the same request may succeed later);
- other HTTP statuses (a bad key, an unknown model or voice) and malformed answers are not.
The message names the URL and, for an HTTP error, the server's own `error.message`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from server.errors import BackendError

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_ERROR_BODY_CHARS = 300


@dataclass(frozen=True, slots=True)
class Endpoint:
    """base_url: up to and including the API version ("http://models:8000/v1").
    api_key: sent as a bearer token when not empty.
    timeout_s: longest wait for the response headers and between two pieces of the body.
    connect_timeout_s: longest wait for the TCP/TLS connection."""

    base_url: str
    api_key: str
    timeout_s: float
    connect_timeout_s: float

    def client(self) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s)
        )

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path


class OptionReader:
    """Typed reads of one backend's option mapping; unknown names and wrong types are
    `BackendError`s that name the backend and the option."""

    def __init__(self, backend: str, options: Mapping[str, object], known: set[str]) -> None:
        unknown = sorted(set(options) - known)
        if unknown:
            raise BackendError(f"unknown {backend} options: {', '.join(unknown)}")
        self._backend = backend
        self._options = options

    def text(self, name: str, default: str) -> str:
        value = self._options.get(name, default)
        if not isinstance(value, str):
            raise BackendError(f"{self._backend} option {name!r} must be a string, not {value!r}")
        return value

    def seconds(self, name: str, default: float) -> float:
        value = self._options.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
            raise BackendError(f"{self._backend} option {name!r} must be a number of seconds in (0, 3600]")
        return float(value)

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self._options.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise BackendError(f"{self._backend} option {name!r} must be an integer in {low}..{high}")
        return value

    def raw(self, name: str, default: Any) -> Any:
        return self._options.get(name, default)

    def endpoint(self) -> Endpoint:
        base_url = self.text("base_url", "")
        if not base_url.startswith(("http://", "https://")):
            raise BackendError(
                f"{self._backend} needs option base_url, an http(s) URL up to the API version"
                f" (e.g. http://models:8000/v1), not {base_url!r}"
            )
        return Endpoint(
            base_url=base_url,
            api_key=self.text("api_key", ""),
            timeout_s=self.seconds("timeout_s", 30.0),
            connect_timeout_s=self.seconds("connect_timeout_s", 5.0),
        )


async def status_error(response: httpx.Response, url: str) -> BackendError:
    """The error for a non-200 answer, with the server's message (read from the body)."""
    raw = (await response.aread()).decode("utf-8", "replace")
    detail: object = raw
    try:
        error = json.loads(raw)["error"]
        detail = error["message"] if isinstance(error, dict) else error
    except (ValueError, KeyError, TypeError):
        pass
    detail = " ".join(str(detail).split())[:_ERROR_BODY_CHARS]
    return BackendError(
        f"{url} answered HTTP {response.status_code}: {detail}",
        retryable=response.status_code in RETRYABLE_STATUS,
    )


def transport_error(exc: httpx.HTTPError, url: str, endpoint: Endpoint) -> BackendError:
    """The error for a failure below HTTP statuses: connecting, waiting, a body cut off."""
    if isinstance(exc, httpx.ConnectTimeout):
        message = f"timed out connecting to {url} after {endpoint.connect_timeout_s:g} s"
    elif isinstance(exc, httpx.ConnectError):
        message = f"cannot connect to {url}: {exc}"
    elif isinstance(exc, httpx.ReadTimeout):
        message = f"timeout: no data from {url} for {endpoint.timeout_s:g} s"
    elif isinstance(exc, httpx.TimeoutException):
        message = f"timeout talking to {url}: {exc}"
    else:  # RemoteProtocolError (the connection dropped mid-body), ReadError, ...
        message = f"the answer from {url} broke off: {type(exc).__name__}: {exc}"
    return BackendError(message, retryable=True)
