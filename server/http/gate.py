"""The websocket upgrade gate: admission decisions (server/http/admission.py) applied to routes.

`@admission_controlled` goes under `@router.websocket(...)`. Before the handler runs (and
before anything accepts the websocket) it asks `app.state.admission` (this process) and, with
Redis, the runtime's `cluster` (server/http/cluster_admission.py: rate limits and the replica's
and global session caps, shared); a refused upgrade gets an HTTP response, never a slow session:
- over `max_sessions`, the replica's or the global cap, or with Redis unreachable while its
  caps fail closed: HTTP 503 with `Retry-After`;
- over a connection-rate limit (per client IP, per API key): HTTP 429 with `Retry-After`;
both with a JSON body `{"error": {"type", "code", "message"}}` and counted in
`voxgate_sessions_refused{reason}`. Where the ASGI server lacks the websocket denial-response
extension, the upgrade is accepted and closed at once: 1013 (try again later) for capacity,
1008 (policy) for rate, with the reason and the retry delay in the close reason.
An admitted handler runs inside `try/finally`: its slot is released however it ends (normal
close, exception, client gone, cancellation).

The per-key limiter is keyed on a fingerprint (a truncated SHA-256) of the credential
presented (`Authorization: Bearer`, or the browser's `openai-insecure-api-key.` subprotocol),
so no key is held in memory; whether the key is valid is the access check's business, later.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable

from fastapi import WebSocket
from fastapi.responses import JSONResponse, Response

from server.http.access import bearer_token, subprotocol_token
from server.http.admission import Admission, Admitted, RefusalReason, Refused
from server.http.close_codes import CLOSE_POLICY_VIOLATION, CLOSE_TRY_AGAIN_LATER
from server.http.cluster_admission import ClusterAdmission, ClusterSlot

log = logging.getLogger(__name__)

HTTP_TOO_MANY_REQUESTS = 429
HTTP_SERVICE_UNAVAILABLE = 503

Handler = Callable[[WebSocket], Awaitable[None]]

# refusals that say "not now" (HTTP 503, close 1013) rather than "you, slow down" (429, 1008)
_UNAVAILABLE = frozenset(
    {RefusalReason.AT_CAPACITY, RefusalReason.GLOBAL_AT_CAPACITY, RefusalReason.SHARED_STATE_UNAVAILABLE}
)


def credential_fingerprint(authorization: str | None, subprotocols: list[str]) -> str | None:
    """A short stable fingerprint of the presented credential, or None if there is none."""
    token = bearer_token(authorization) or subprotocol_token(subprotocols)
    if token is None:
        return None
    return hashlib.sha256(token.encode()).hexdigest()[:24]


def refusal_message(refused: Refused) -> str:
    retry_s = math.ceil(refused.retry_after_s)
    match refused.reason:
        case RefusalReason.AT_CAPACITY:
            return f"the server is at its session limit; try again in {retry_s} s"
        case RefusalReason.IP_RATE_LIMITED:
            return f"too many new connections from this address; try again in {retry_s} s"
        case RefusalReason.KEY_RATE_LIMITED:
            return f"too many new connections with this API key; try again in {retry_s} s"
        case RefusalReason.GLOBAL_AT_CAPACITY:
            return f"the service is at its session limit; try again in {retry_s} s"
        case RefusalReason.SHARED_STATE_UNAVAILABLE:
            return (
                f"the server cannot count sessions now (shared state unavailable); try again in {retry_s} s"
            )


def refusal_status(refused: Refused) -> int:
    if refused.reason in _UNAVAILABLE:
        return HTTP_SERVICE_UNAVAILABLE
    return HTTP_TOO_MANY_REQUESTS


def close_reason(text: str) -> str:
    """A websocket close reason: at most 123 bytes of UTF-8."""
    return text.encode(errors="replace")[:123].decode(errors="ignore")  # lone surrogates: "?"


async def deny_upgrade(
    websocket: WebSocket, response: Response, close_code: int, reason: str, *, accept_first: bool = True
) -> None:
    """Refuse a websocket upgrade with an HTTP `response` where the ASGI server has the
    denial-response extension; elsewhere close with `close_code` and `reason`, after
    accepting (so the client sees the code) unless `accept_first` is False (HTTP 403)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
        return
    if accept_first:
        await websocket.accept()
    await websocket.close(close_code, close_reason(reason))


async def refuse(websocket: WebSocket, refused: Refused) -> None:
    """Refuse the upgrade before accepting it (HTTP), or accept and close where the server
    cannot answer an upgrade with an HTTP response."""
    message = refusal_message(refused)
    retry_after = str(max(1, math.ceil(refused.retry_after_s)))
    body = {"error": {"type": "server_error", "code": refused.reason.value, "message": message}}
    response = JSONResponse(body, status_code=refusal_status(refused), headers={"Retry-After": retry_after})
    code = CLOSE_TRY_AGAIN_LATER if refused.reason in _UNAVAILABLE else CLOSE_POLICY_VIOLATION
    await deny_upgrade(websocket, response, code, message)


def admission_controlled(handler: Handler) -> Handler:
    """Admit (or refuse) the upgrade, then run `handler`, releasing its slots at the end."""

    @functools.wraps(handler)
    async def gated(websocket: WebSocket) -> None:
        admission: Admission = websocket.app.state.admission
        cluster: ClusterAdmission | None = websocket.app.state.runtime.cluster
        client_ip = websocket.client.host if websocket.client else None
        key = credential_fingerprint(
            websocket.headers.get("authorization"), list(websocket.scope.get("subprotocols") or [])
        )
        now_s = time.monotonic()
        shared_slot: ClusterSlot | None = None
        # with Redis the rate limits are the cluster's (the process's admission has them off)
        rate_refusal = None if cluster is None else await cluster.check_rates(client_ip, key, now_s)
        decision = rate_refusal or admission.admit(client_ip, key, now_s)
        if isinstance(decision, Admitted) and cluster is not None:
            claim = await cluster.claim()
            if isinstance(claim, Refused):
                admission.release(decision.slot)
                decision = claim
            else:
                shared_slot = claim
        if isinstance(decision, Refused):
            websocket.app.state.runtime.metrics.refusals.labels(reason=decision.reason.value).inc()
            log.warning(
                "websocket upgrade refused",
                extra={
                    "reason": decision.reason.value,
                    "client_host": client_ip,
                    "sessions": admission.active,
                    "max_sessions": admission.maximum,
                },
            )
            await refuse(websocket, decision)
            return
        try:
            await handler(websocket)
        finally:
            admission.release(decision.slot)
            if shared_slot is not None:
                assert cluster is not None
                await asyncio.shield(cluster.release(shared_slot))  # bounded by the Redis timeout

    return gated
