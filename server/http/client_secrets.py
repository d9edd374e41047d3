"""`POST /v1/realtime/client_secrets`: mint a short-lived client secret for a browser, and the
HTTP side of access control (errors as JSON, the API-key check of `/metrics`).

The request and answer follow OpenAI's GA API:

    POST /v1/realtime/client_secrets      Authorization: Bearer <API key>
    {"expires_after": {"anchor": "created_at", "seconds": 600}, "session": {"type": "realtime", ...}}
    -> 200 {"value": "ek_...", "expires_at": <Unix s>, "session": {<the session it starts with>}}

Bad bodies get 400 with `{"error": {"type", "code", "message", "param"}}`; a client secret
cannot mint another (403). The decisions are `server.http.access`'s; this module only does HTTP.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from server.errors import SharedStateUnavailable
from server.http.access import (
    AccessControl,
    AccessDenied,
    InvalidMintRequest,
    bearer_token,
    parse_mint_request,
)
from server.http.runtime import Runtime
from server.realtime.wire import Dialect, EventWriter, apply_session_update

router = APIRouter()

MAX_MINT_BODY_BYTES = 256 * 1024


def error_response(status: int, message: str, *, code: str, param: str | None = None) -> JSONResponse:
    """An OpenAI-style error body."""
    if status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error" if status in (400, 404, 413, 429) else "authentication_error"
    headers = (
        {"WWW-Authenticate": "Bearer"} if status == 401 else {"Retry-After": "5"} if status == 503 else None
    )
    return JSONResponse(
        {"error": {"type": kind, "code": code, "message": message, "param": param}},
        status_code=status,
        headers=headers,
    )


def denial_response(exc: AccessDenied) -> JSONResponse:
    return error_response(exc.status, str(exc), code=exc.code)


def require_api_key(request: Request) -> JSONResponse | None:
    """None when the request may use an API-key-only route, else the response refusing it."""
    access: AccessControl = request.app.state.access
    try:
        access.authorize_key(bearer_token(request.headers.get("authorization")))
    except AccessDenied as exc:
        return denial_response(exc)
    return None


def _described_session(runtime: Runtime, session: dict[str, Any]) -> dict[str, Any]:
    """The session object (GA shape) a session opened with the secret starts with: the
    server's defaults with the bound fields applied. No id: each session gets its own."""
    config = runtime.conversation_options().session_config("")
    apply_session_update(config, session)
    described = EventWriter(Dialect.GA).session(config)
    del described["id"]
    return described


async def json_body(request: Request, max_bytes: int, empty: object = None) -> object | JSONResponse:
    """The request's JSON body (`empty` for an empty one, when given), or the error response:
    413 over `max_bytes`, 400 when it is not JSON."""
    raw = await request.body()
    if len(raw) > max_bytes:
        return error_response(413, f"the request body is over {max_bytes} bytes", code="request_too_large")
    if empty is not None and not raw.strip():
        return empty
    try:
        parsed: object = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return error_response(400, f"the request body is not JSON: {exc}", code="invalid_json")
    return parsed


@router.post("/v1/realtime/client_secrets")
async def mint_client_secret(request: Request) -> JSONResponse:
    access: AccessControl = request.app.state.access
    refusal = require_api_key(request)
    if refusal is not None:
        return refusal
    body = await json_body(request, MAX_MINT_BODY_BYTES, empty={})
    if isinstance(body, JSONResponse):
        return body
    try:
        ttl_s, session = parse_mint_request(body, access.default_ttl_s)
        secret = await access.secrets.mint(session, ttl_s, now_s=time.time())
    except InvalidMintRequest as exc:
        return error_response(400, str(exc), code=exc.code, param=exc.param)
    except AccessDenied as exc:
        return denial_response(exc)
    except SharedStateUnavailable:
        request.app.state.runtime.metrics.shared_state_failures.labels(operation="client_secret").inc()
        return error_response(
            503,
            "client secrets cannot be stored now (shared state unavailable); try again shortly",
            code="shared_state_unavailable",
        )
    return JSONResponse(
        {
            "value": secret.value,
            "expires_at": secret.expires_at_s,
            "session": _described_session(request.app.state.runtime, dict(secret.session)),
        }
    )
