"""Who may use the server: API keys, short-lived client secrets, browser origins.

Decisions only: nothing here reads the clock (callers pass `now_s`, Unix seconds); the only
awaits are a client-secret table's, which may be Redis (`RedisClientSecrets`).
`routes.py` and `client_secrets.py` feed it requests; `cli.py` asks `bind_refusal()` before
serving.

Invariants:
- An API key is compared with `hmac.compare_digest` against every configured key, without
  stopping at the first match, so timing tells nothing about which key (or how much of one)
  matched.
- A client secret (`ek_...`) is a random token; the table (this process's memory, or Redis
  shared by every replica) holds only its SHA-256 digest, the session it is bound to and its
  expiry. It opens any number of sessions until `expires_at_s`
  (OpenAI's GA client secrets behave alike: only an expiry is documented), never mints another
  secret, and is never accepted where an API key is required (`/metrics`, minting).
- With no keys configured the server is open: credentials that are not client secrets are
  ignored (OpenAI clients always send some bearer token); a client secret is still checked, so
  a page never starts a session with settings other than those it was given.
- A browser's Origin must be on the allow-list; without a list, only pages served from this
  server on a loopback name (localhost, 127.0.0.0/8, [::1]) are allowed. Requests without an
  Origin header (non-browser clients) are not browsers and are allowed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from server.errors import ProtocolViolation
from server.realtime.session_update import apply_session_update
from server.streaming.session_config import SessionConfig

CLIENT_SECRET_PREFIX = "ek_"
SUBPROTOCOL_KEY_PREFIX = "openai-insecure-api-key."
MIN_CLIENT_SECRET_TTL_S = 10
MAX_CLIENT_SECRET_TTL_S = 7200
DEFAULT_CLIENT_SECRET_TTL_S = 600
MAX_LIVE_CLIENT_SECRETS = 10_000
_SECRET_BYTES = 32
_LOOPBACK_NAMES = {"localhost"}
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class AccessConfigError(Exception):
    """The access settings cannot be used (unreadable or empty key file, bad key); the server
    must not start."""


class AccessDenied(Exception):
    """A request without the right credentials. `code` is machine-readable, the message says
    what to do; `status` is the HTTP status to answer with (401: who are you, 403: not this)."""

    def __init__(self, message: str, *, code: str, status: int = 401) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class InvalidMintRequest(Exception):
    """A client-secret request body that cannot be honoured (HTTP 400); `param` names the field."""

    def __init__(self, message: str, *, code: str, param: str | None) -> None:
        super().__init__(message)
        self.code = code
        self.param = param


# --- API keys ------------------------------------------------------------------------------


def parse_key_file(text: str, source: str) -> list[str]:
    """Keys from a key file: one per line; blank lines and lines starting with '#' are skipped,
    as is anything after ' #' on a line. Raises AccessConfigError naming `source` and the line."""
    keys: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        _check_key(line, f"{source}, line {number}")
        keys.append(line)
    if not keys:
        raise AccessConfigError(f"{source} holds no API keys (one key per line; '#' starts a comment)")
    return keys


def read_key_file(path: Path) -> list[str]:
    """`parse_key_file` of the file at `path`; an unreadable file is an AccessConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AccessConfigError(f"cannot read the API key file {path}: {exc}") from exc
    return parse_key_file(text, str(path))


def _check_key(key: str, where: str) -> None:
    if any(c.isspace() for c in key):
        raise AccessConfigError(f"the API key at {where} contains whitespace")
    if key.startswith(CLIENT_SECRET_PREFIX):
        raise AccessConfigError(
            f"the API key at {where} starts with {CLIENT_SECRET_PREFIX!r}, which marks client secrets"
        )
    if not key.isascii() or not key.isprintable():
        raise AccessConfigError(f"the API key at {where} must be printable ASCII")


class ApiKeys:
    """The configured API keys; empty means the server does not ask for one."""

    def __init__(self, keys: Iterable[str]) -> None:
        listed = list(keys)
        for index, key in enumerate(listed):
            _check_key(key, f"api_keys[{index}]")
        self._keys = [key.encode() for key in dict.fromkeys(listed)]

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def required(self) -> bool:
        return bool(self._keys)

    def matches(self, candidate: str) -> bool:
        """Whether `candidate` is one of the keys, compared in constant time against each."""
        given = candidate.encode("utf-8", errors="replace")
        found = False
        for key in self._keys:
            found |= hmac.compare_digest(given, key)
        return found


# --- client secrets ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientSecret:
    """A minted secret: `value` goes to the browser; sessions opened with it start with
    `session` (a validated GA session object) applied."""

    value: str
    expires_at_s: int
    session: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Entry:
    expires_at_s: int
    session: Mapping[str, Any]


def check_session(session: object) -> dict[str, Any]:
    """The session object a secret is bound to, validated like a `session.update` (GA shape,
    `type` "realtime", "transcription" or absent). Raises InvalidMintRequest with the offending `param`."""
    if not isinstance(session, dict):
        raise InvalidMintRequest("session must be an object", code="invalid_value", param="session")
    if session.get("type", "realtime") not in ("realtime", "transcription"):
        raise InvalidMintRequest(
            f"session.type {session.get('type')!r} is not supported; use 'realtime' or 'transcription'",
            code="invalid_value",
            param="session.type",
        )
    if "model" in session and not isinstance(session["model"], str):
        raise InvalidMintRequest(
            "session.model must be a string", code="invalid_value", param="session.model"
        )
    try:
        apply_session_update(SessionConfig(id="", model=""), session)
    except ProtocolViolation as exc:
        raise InvalidMintRequest(str(exc), code=exc.code, param=exc.param) from exc
    return dict(session)


def parse_mint_request(body: object, default_ttl_s: int) -> tuple[int, dict[str, Any]]:
    """(ttl_s, session) from a `POST /v1/realtime/client_secrets` body:
    `{"expires_after": {"anchor": "created_at", "seconds": 10..7200}, "session": {...}}`,
    both optional. Raises InvalidMintRequest."""
    if not isinstance(body, dict):
        raise InvalidMintRequest("the request body must be a JSON object", code="invalid_request", param=None)
    unknown = sorted(set(body) - {"expires_after", "session"})
    if unknown:
        raise InvalidMintRequest(f"unknown field {unknown[0]!r}", code="unknown_parameter", param=unknown[0])
    ttl_s = default_ttl_s
    expires_after = body.get("expires_after")
    if expires_after is not None:
        if not isinstance(expires_after, dict):
            raise InvalidMintRequest(
                "expires_after must be an object", code="invalid_value", param="expires_after"
            )
        anchor = expires_after.get("anchor", "created_at")
        if anchor != "created_at":
            raise InvalidMintRequest(
                f"expires_after.anchor {anchor!r} is not supported; use 'created_at'",
                code="invalid_value",
                param="expires_after.anchor",
            )
        seconds = expires_after.get("seconds", default_ttl_s)
        if isinstance(seconds, bool) or not isinstance(seconds, int):
            raise InvalidMintRequest(
                "expires_after.seconds must be an integer",
                code="invalid_value",
                param="expires_after.seconds",
            )
        ttl_s = seconds
    check_ttl(ttl_s, "expires_after.seconds")
    session = check_session(body.get("session") or {})
    return ttl_s, session


def check_ttl(ttl_s: int, param: str) -> None:
    if not MIN_CLIENT_SECRET_TTL_S <= ttl_s <= MAX_CLIENT_SECRET_TTL_S:
        raise InvalidMintRequest(
            f"{param} must be within [{MIN_CLIENT_SECRET_TTL_S}, {MAX_CLIENT_SECRET_TTL_S}]",
            code="invalid_value",
            param=param,
        )


def secret_digest(value: str) -> bytes:
    """What a secret table keys a secret by: its SHA-256 (the secret itself is never held)."""
    return hashlib.sha256(value.encode("utf-8", errors="replace")).digest()


def new_secret_value() -> str:
    return CLIENT_SECRET_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)


def too_many_secrets(max_live: int) -> AccessDenied:
    return AccessDenied(
        f"{max_live} client secrets are live; wait for some to expire",
        code="too_many_client_secrets",
        status=429,
    )


def checked_secret(
    value: str, expires_at_s: int | None, session: Mapping[str, Any], now_s: float
) -> ClientSecret:
    """The secret a table found (`expires_at_s` None: not found), or AccessDenied."""
    if expires_at_s is None:
        raise AccessDenied("unknown client secret", code="invalid_client_secret")
    if now_s >= expires_at_s:
        raise AccessDenied("the client secret has expired; mint a new one", code="expired_client_secret")
    return ClientSecret(value, expires_at_s, session)


class ClientSecrets(Protocol):
    """Where minted client secrets live: this process (`ClientSecretStore`) or Redis, shared
    by every replica (`server/shared/redis_state.py` through `RedisClientSecrets`)."""

    async def mint(self, session: Mapping[str, Any], ttl_s: int, now_s: float) -> ClientSecret:
        """A new secret bound to `session` (validated: `check_session`), expiring `ttl_s`
        after `now_s`. Raises AccessDenied (429) when too many are live."""
        ...

    async def verify(self, value: str, now_s: float) -> ClientSecret:
        """The live secret `value`, or AccessDenied (unknown, expired)."""
        ...

    async def revoke(self, value: str) -> bool:
        """Forget a secret before it expires; whether it was live."""
        ...


class ClientSecretStore:
    """Minted client secrets, in memory (one server process; secrets die with it).

    `mint()` drops expired entries first and refuses beyond `max_live` live secrets. The
    methods are coroutines only to fit `ClientSecrets`: nothing here awaits.
    """

    def __init__(self, max_live: int = MAX_LIVE_CLIENT_SECRETS) -> None:
        self._max_live = max_live
        self._entries: dict[bytes, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def mint(self, session: Mapping[str, Any], ttl_s: int, now_s: float) -> ClientSecret:
        check_ttl(ttl_s, "ttl_s")
        self.purge(now_s)
        if len(self._entries) >= self._max_live:
            raise too_many_secrets(self._max_live)
        value = new_secret_value()
        expires_at_s = int(now_s) + ttl_s
        bound = dict(session)
        self._entries[secret_digest(value)] = _Entry(expires_at_s, bound)
        return ClientSecret(value, expires_at_s, bound)

    async def verify(self, value: str, now_s: float) -> ClientSecret:
        entry = self._entries.get(secret_digest(value))
        if entry is not None and now_s >= entry.expires_at_s:
            del self._entries[secret_digest(value)]
        return checked_secret(
            value,
            None if entry is None else entry.expires_at_s,
            {} if entry is None else entry.session,
            now_s,
        )

    async def revoke(self, value: str) -> bool:
        return self._entries.pop(secret_digest(value), None) is not None

    def purge(self, now_s: float) -> None:
        expired = [d for d, e in self._entries.items() if now_s >= e.expires_at_s]
        for digest in expired:
            del self._entries[digest]


class SecretRecords(Protocol):
    """Storage for `RedisClientSecrets` (server/shared/redis_state.RedisState)."""

    async def store_secret(
        self, digest_hex: str, record: Mapping[str, Any], expires_at_s: int, max_live: int, keep_s: int
    ) -> bool: ...

    async def load_secret(self, digest_hex: str) -> dict[str, Any] | None: ...

    async def delete_secret(self, digest_hex: str) -> bool: ...


# Redis keeps a record this long past its expiry, so that using it then says "expired"
EXPIRED_SECRET_KEPT_S = 3600


class RedisClientSecrets:
    """Client secrets in Redis: minted on any replica, accepted by every replica until they
    expire. Redis unreachable: SharedStateUnavailable (the route answers 503)."""

    def __init__(self, records: SecretRecords, max_live: int = MAX_LIVE_CLIENT_SECRETS) -> None:
        self._records = records
        self._max_live = max_live

    async def mint(self, session: Mapping[str, Any], ttl_s: int, now_s: float) -> ClientSecret:
        check_ttl(ttl_s, "ttl_s")
        value = new_secret_value()
        expires_at_s = int(now_s) + ttl_s
        bound = dict(session)
        record = {"expires_at_s": expires_at_s, "session": bound}
        digest = secret_digest(value).hex()
        if not await self._records.store_secret(
            digest, record, expires_at_s, self._max_live, EXPIRED_SECRET_KEPT_S
        ):
            raise too_many_secrets(self._max_live)
        return ClientSecret(value, expires_at_s, bound)

    async def verify(self, value: str, now_s: float) -> ClientSecret:
        record = await self._records.load_secret(secret_digest(value).hex())
        if record is None:
            return checked_secret(value, None, {}, now_s)
        return checked_secret(value, int(record["expires_at_s"]), dict(record["session"]), now_s)

    async def revoke(self, value: str) -> bool:
        return await self._records.delete_secret(secret_digest(value).hex())


# --- origins -------------------------------------------------------------------------------


def is_loopback_host(host: str) -> bool:
    """Whether a bind address or host name is a loopback one ('localhost', 127.x, ::1)."""
    name = host.strip().lower().removeprefix("[").removesuffix("]")
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _origin_parts(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an Origin or allow-list entry, or None if it is not one."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    return scheme, parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme]


def _host_parts(host: str, scheme: str) -> tuple[str, int] | None:
    """(host, port) of a Host header, the port defaulting to the Origin's scheme's."""
    parsed = _origin_parts(f"{scheme}://{host.strip()}")
    return None if parsed is None else (parsed[1], parsed[2])


class OriginPolicy:
    """Which browser origins may open a websocket (and, through CORS, mint secrets).

    `allowed`: exact origins ("https://app.example.com", default ports optional), or "*" for
    any. Empty: same-origin pages on a loopback name only.
    """

    def __init__(self, allowed: Sequence[str]) -> None:
        self.allow_any = "*" in allowed
        self._allowed: set[tuple[str, str, int]] = set()
        self.listed: list[str] = []
        for entry in allowed:
            if entry == "*":
                continue
            parts = _origin_parts(entry)
            if parts is None:
                raise AccessConfigError(
                    f"allowed_origins entry {entry!r} is not an origin like 'https://app.example.com'"
                )
            self._allowed.add(parts)
            self.listed.append(entry.strip().rstrip("/"))

    def allows(self, origin: str | None, host: str | None) -> bool:
        """Whether a request with this Origin header, sent to this Host header, may proceed."""
        if origin is None:
            return True  # not a browser: browsers always send Origin on websocket upgrades
        if self.allow_any:
            return True
        parts = _origin_parts(origin)
        if parts is None:
            return False  # "null" (file://, sandboxed frames) or garbage
        if self._allowed:
            return parts in self._allowed
        scheme, name, port = parts
        if not is_loopback_host(name) or host is None:
            return False
        return _host_parts(host, scheme) == (name, port)


# --- the whole policy ----------------------------------------------------------------------


class GrantKind(Enum):
    OPEN = "open"  # no keys configured
    API_KEY = "api_key"
    CLIENT_SECRET = "client_secret"


@dataclass(frozen=True, slots=True)
class Grant:
    kind: GrantKind
    session: Mapping[str, Any] = field(default_factory=dict)  # bound by a client secret


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def subprotocol_token(subprotocols: Sequence[str]) -> str | None:
    """The key a browser passes as the `openai-insecure-api-key.<key>` subprotocol, or None."""
    for offered in subprotocols:
        if offered.startswith(SUBPROTOCOL_KEY_PREFIX) and len(offered) > len(SUBPROTOCOL_KEY_PREFIX):
            return offered[len(SUBPROTOCOL_KEY_PREFIX) :]
    return None


class AccessControl:
    """Keys, client secrets and origins together; one per app (`app.state.access`)."""

    def __init__(
        self,
        keys: ApiKeys,
        origins: OriginPolicy,
        secrets: ClientSecrets | None = None,
        default_ttl_s: int = DEFAULT_CLIENT_SECRET_TTL_S,
    ) -> None:
        check_ttl(default_ttl_s, "client_secret_ttl_s")
        self.keys = keys
        self.origins = origins
        self.secrets: ClientSecrets = secrets if secrets is not None else ClientSecretStore()
        self.default_ttl_s = default_ttl_s

    @property
    def requires_key(self) -> bool:
        return self.keys.required

    async def authenticate(self, credential: str | None, now_s: float) -> Grant:
        """What a session request with this bearer token (or subprotocol key) may do.
        Raises AccessDenied, or SharedStateUnavailable when the secrets are in Redis and it
        does not answer."""
        if credential is not None and credential.startswith(CLIENT_SECRET_PREFIX):
            secret = await self.secrets.verify(credential, now_s)
            return Grant(GrantKind.CLIENT_SECRET, secret.session)
        if not self.keys.required:
            return Grant(GrantKind.OPEN)
        return Grant(self._check_api_key(credential))

    def authorize_key(self, credential: str | None) -> GrantKind:
        """For what only an API key may do (minting secrets, /metrics). Raises AccessDenied."""
        if credential is not None and credential.startswith(CLIENT_SECRET_PREFIX):
            raise AccessDenied(
                "a client secret cannot be used here; use an API key",
                code="client_secret_not_allowed",
                status=403,
            )
        if not self.keys.required:
            return GrantKind.OPEN
        return self._check_api_key(credential)

    def _check_api_key(self, credential: str | None) -> GrantKind:
        if credential is None:
            raise AccessDenied(
                "an API key is required: send 'Authorization: Bearer <key>' (browsers: the "
                f"'{SUBPROTOCOL_KEY_PREFIX}<key>' subprotocol)",
                code="missing_api_key",
            )
        if not self.keys.matches(credential):
            raise AccessDenied("invalid API key", code="invalid_api_key")
        return GrantKind.API_KEY

    async def mint(self, session: object = None, ttl_s: int | None = None, *, now_s: float) -> ClientSecret:
        """A client secret bound to `session` (GA session object, validated), living `ttl_s`
        (default: the configured TTL). Raises InvalidMintRequest, AccessDenied (429) or
        SharedStateUnavailable."""
        ttl = self.default_ttl_s if ttl_s is None else ttl_s
        check_ttl(ttl, "ttl_s")
        return await self.secrets.mint(check_session(session or {}), ttl, now_s)


def bind_refusal(host: str, requires_key: bool, allow_unauthenticated: bool) -> str | None:
    """Why serving on `host` must not start, or None: a non-loopback bind needs API keys
    unless explicitly allowed."""
    if is_loopback_host(host) or requires_key or allow_unauthenticated:
        return None
    return (
        f"refusing to listen on {host} without API keys: anyone who can reach it could use it. "
        "Set VOXGATE_API_KEYS or VOXGATE_API_KEYS_FILE, bind to 127.0.0.1, or set "
        "VOXGATE_ALLOW_UNAUTHENTICATED=true if something in front of Voxgate checks access"
    )
