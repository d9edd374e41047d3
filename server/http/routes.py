"""HTTP and websocket routes. The only place that picks close codes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request, Response, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from server.errors import BackendUnavailable, SharedStateUnavailable
from server.http.access import AccessControl, AccessDenied, Grant, bearer_token, subprotocol_token
from server.http.client_secrets import denial_response, require_api_key
from server.http.close_codes import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNSUPPORTED_DATA,
)
from server.http.cluster_admission import ClusterAdmission
from server.http.gate import admission_controlled, close_reason, deny_upgrade
from server.http.process_stats import process_stats
from server.http.runtime import Runtime, guard_options
from server.http.session_setup import SessionRequest, SessionSetup
from server.http.shutdown import SHUTDOWN_REASON
from server.knowledge.knowledge import KnowledgeFileError
from server.realtime.port import RealtimePort
from server.realtime.wire import Dialect, new_id
from server.streaming.conversation import Conversation
from server.streaming.guard import TransportGuard
from server.streaming.lifetime import SessionEnd
from server.streaming.port import TransportClosed
from server.telephony.call_parameters import CallParameters
from server.telephony.twilio import TwilioMediaStream, TwilioOptions, upgrade_is_signed

log = logging.getLogger(__name__)

router = APIRouter()

# a close frame to a client that stopped reading is never taken: give up after this long
CLOSE_TIMEOUT_S = 5.0
# the server ended the session (server/streaming/lifetime.py): expected ends are normal
# closures; a client that stopped reading broke the protocol's flow (policy)
SESSION_END_CLOSE = {
    SessionEnd.MAX_DURATION: CLOSE_NORMAL,
    SessionEnd.IDLE: CLOSE_NORMAL,
    SessionEnd.SLOW_CONSUMER: CLOSE_POLICY_VIOLATION,
    SessionEnd.MESSAGE_TOO_BIG: CLOSE_MESSAGE_TOO_BIG,
}


class StarletteTransport:
    """Adapts a Starlette WebSocket to a TextTransport (what a conversation's port reads)."""

    def __init__(self, websocket: WebSocket) -> None:
        self._ws = websocket

    async def receive(self) -> str | bytes:
        try:
            message = await self._ws.receive()
        except (WebSocketDisconnect, RuntimeError) as exc:
            raise TransportClosed from exc
        if message["type"] == "websocket.disconnect":
            raise TransportClosed
        text = message.get("text")
        if text is not None:
            return str(text)
        data = message.get("bytes")
        return bytes(data) if data is not None else b""

    async def send_text(self, text: str) -> None:
        try:
            await self._ws.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            raise TransportClosed from exc


@router.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    """`status`: ok; degraded while a backend's worker process restarts (its turns wait or
    fail, the server serves); failed (HTTP 503) when one cannot be restarted."""
    runtime: Runtime = request.app.state.runtime
    backends = runtime.backend_health()
    states = {str(health["state"]) for health in backends.values()}
    status = "failed" if "failed" in states else "degraded" if states - {"ok"} else "ok"
    body = {
        "status": status,
        "sessions": runtime.active_sessions(),
        "admitted_sessions": request.app.state.admission.active,
        "max_sessions": request.app.state.admission.maximum,
        "auth_required": request.app.state.access.requires_key,  # the page asks for a key
        "backends": backends,
    }
    if runtime.cluster is not None:
        body["shared_state"] = await _shared_counts(runtime.cluster)
    return JSONResponse(body, status_code=503 if status == "failed" else 200)


async def _shared_counts(cluster: ClusterAdmission) -> dict[str, object]:
    """The replica's and the service's sessions as Redis counts them, with their caps."""
    counts = await cluster.counts()
    if counts is None:
        return {"status": "unavailable"}
    return {
        "status": "ok",
        "replica_id": cluster.options.replica_id,
        "replica_sessions": counts.replica,
        "replica_max_sessions": cluster.options.replica_max_sessions,
        "global_sessions": counts.all_replicas,
        "global_max_sessions": cluster.options.global_max_sessions,
    }


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Whether a load balancer should send this process new sessions: 503 while it drains
    (SIGTERM: readiness flips before anything else), is at its session limit (its own, or with
    Redis its replica's), or a backend failed; 200 otherwise. A full service (the global cap)
    and an unreachable Redis leave it ready: every replica would be alike, and upgrades get
    their own 503. `/healthz` is liveness: it stays 200 while draining."""
    runtime: Runtime = request.app.state.runtime
    admission = request.app.state.admission
    if runtime.sessions.is_draining:
        status = "draining"
    elif admission.active >= admission.maximum or (
        runtime.cluster is not None and await runtime.cluster.replica_is_full()
    ):
        status = "at_capacity"
    elif any(health["state"] == "failed" for health in runtime.backend_health().values()):
        status = "failed"
    else:
        status = "ready"
    body = {"status": status, "sessions": admission.active, "max_sessions": admission.maximum}
    return JSONResponse(body, status_code=200 if status == "ready" else 503)


@router.get("/debug/stats")
async def debug_stats(request: Request) -> Response:
    """RSS, open fds, asyncio tasks and live sessions of the server process (soak runs);
    behind an API key when keys are configured, like /metrics."""
    refusal = require_api_key(request)
    if refusal is not None:
        return refusal
    return JSONResponse(process_stats(request.app.state.runtime.active_sessions()).as_dict())


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    refusal = require_api_key(request)  # when API keys are configured
    if refusal is not None:
        return refusal
    return Response(
        request.app.state.runtime.metrics.render(),
        media_type="text/plain; version=0.0.4; charset=utf-8",
    )


def _initial_session(websocket: WebSocket, bound: Mapping[str, Any]) -> Mapping[str, Any]:
    """A client secret's session; else `?intent=transcription` (OpenAI's way to open a
    transcription session) opens one."""
    if not bound and websocket.query_params.get("intent") == "transcription":
        return {"type": "transcription"}
    return bound


def _dialect(websocket: WebSocket) -> Dialect:
    beta = websocket.headers.get("openai-beta", "")
    return Dialect.BETA if "realtime=v1" in beta.replace(" ", "") else Dialect.GA


def _subprotocol(websocket: WebSocket) -> str | None:
    offered = websocket.scope.get("subprotocols") or []
    return "realtime" if "realtime" in offered else None


async def _session_setup(
    runtime: Runtime, websocket: WebSocket, parameters: Mapping[str, str] | None = None
) -> SessionSetup:
    """Ask the embedding backend's hook (if any) how to set this session up."""
    if runtime.session_setup is None:
        return SessionSetup()
    request = SessionRequest(
        path=websocket.url.path,
        query=dict(websocket.query_params),
        headers={k.lower(): v for k, v in websocket.headers.items()},
        client_host=websocket.client.host if websocket.client else None,
        parameters=dict(parameters or {}),
    )
    setup: SessionSetup = await runtime.session_setup(request)
    return setup


async def _admit(websocket: WebSocket) -> Grant | None:
    """What this upgrade may do (its Origin and key or client secret checked), or None after
    refusing it before accept: a 401/403 JSON response, or HTTP 403 where the server cannot
    send one."""
    access: AccessControl = websocket.app.state.access
    origin = websocket.headers.get("origin")
    try:
        if not access.origins.allows(origin, websocket.headers.get("host")):
            raise AccessDenied(
                f"origin {origin!r} is not allowed; list it in VOXGATE_ALLOWED_ORIGINS",
                code="origin_not_allowed",
                status=403,
            )
        credential = bearer_token(websocket.headers.get("authorization")) or subprotocol_token(
            websocket.scope.get("subprotocols") or []
        )
        return await access.authenticate(credential, now_s=time.time())
    except SharedStateUnavailable as exc:  # a client secret, and Redis does not answer
        websocket.app.state.runtime.metrics.shared_state_failures.labels(operation="client_secret").inc()
        log.warning("client secret not checked: shared state unavailable", extra={"error": str(exc)})
        message = "client secrets cannot be checked now (shared state unavailable); try again shortly"
        body = {"error": {"type": "server_error", "code": "shared_state_unavailable", "message": message}}
        response = JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
        await deny_upgrade(websocket, response, CLOSE_TRY_AGAIN_LATER, message)
        return None
    except AccessDenied as exc:
        log.warning(
            "websocket refused",
            extra={"code": exc.code, "client_host": getattr(websocket.client, "host", None)},
        )
        await deny_upgrade(
            websocket, denial_response(exc), CLOSE_POLICY_VIOLATION, str(exc), accept_first=False
        )
        return None


@router.websocket("/v1/realtime")
@admission_controlled
async def realtime(websocket: WebSocket) -> None:
    runtime: Runtime = websocket.app.state.runtime
    if runtime.sessions.is_draining:
        await _refuse_shutting_down(websocket)
        return
    grant = await _admit(websocket)
    if grant is None:
        return
    await websocket.accept(subprotocol=_subprotocol(websocket))
    setup = await _session_setup(runtime, websocket)
    # a client secret's session names the model its minter chose
    bound_model = grant.session.get("model")
    requested = bound_model or setup.profile or websocket.query_params.get("model")
    try:
        model = await runtime.model_for(requested)
        grounding = await runtime.grounding_for(setup.knowledge)
    except (BackendUnavailable, KnowledgeFileError) as exc:
        what = "knowledge" if isinstance(exc, KnowledgeFileError) else "model"
        log.error(f"{what} unavailable", extra={"model": requested, "reason": str(exc)})
        await websocket.send_json(
            {
                "type": "error",
                "event_id": new_id("event"),
                "error": {
                    "type": "server_error",
                    "code": f"{what}_unavailable",
                    "message": str(exc),
                    "param": what,
                    "event_id": None,
                },
            }
        )
        await websocket.close(CLOSE_TRY_AGAIN_LATER, f"{what} unavailable")
        return
    guard = TransportGuard(StarletteTransport(websocket), guard_options(runtime.settings))
    conversation = Conversation(
        RealtimePort(guard, _dialect(websocket), initial_session=_initial_session(websocket, grant.session)),
        model,
        runtime.vad,
        runtime.conversation_options(requested, setup, grounding),
        runtime.metrics,
        on_event=runtime.on_event,
        tools=runtime.tools,
        metadata=setup.metadata,
    )
    try:
        await runtime.sessions.run(conversation)
    except (Exception, BaseExceptionGroup):  # a BaseException out of a task ends the session only
        log.exception("session failed", extra={"session_id": conversation.config.id})
        if websocket.application_state is WebSocketState.CONNECTED:
            await websocket.close(CLOSE_INTERNAL_ERROR, "internal error; see server logs")
        return
    code, reason = _server_end(runtime, conversation, guard) or _shutdown_end(runtime) or (CLOSE_NORMAL, "")
    await _close(websocket, code, reason)


def _shutdown_end(runtime: Runtime) -> tuple[int, str] | None:
    """Going away, for a session that ended while the server shuts down (server/http/shutdown.py)."""
    return (CLOSE_GOING_AWAY, SHUTDOWN_REASON) if runtime.sessions.is_draining else None


async def _refuse_shutting_down(websocket: WebSocket) -> None:
    """Refuse an upgrade during shutdown: HTTP 503, or accept and close 1013 where the server
    cannot answer an upgrade with an HTTP response."""
    body = {"error": {"type": "server_error", "code": "server_shutting_down", "message": SHUTDOWN_REASON}}
    await deny_upgrade(websocket, JSONResponse(body, status_code=503), CLOSE_TRY_AGAIN_LATER, SHUTDOWN_REASON)


def _server_end(
    runtime: Runtime, conversation: Conversation | None, guard: TransportGuard
) -> tuple[int, str] | None:
    """The close code and reason when the server ended the session (a limit), else None."""
    settings = runtime.settings
    if guard.ended is not None:
        end, detail = guard.ended.reason, guard.ended.detail
    elif conversation is not None and conversation.ended_by is not None:
        end = conversation.ended_by
        detail = (
            "session max duration reached"
            if end is SessionEnd.MAX_DURATION
            else f"idle timeout: no client message for {settings.idle_timeout_s:g} s"
        )
    else:
        return None
    runtime.metrics.session_ends.labels(reason=end.value).inc()
    log.info("session ended by the server", extra={"reason": end.value})
    return SESSION_END_CLOSE[end], close_reason(detail)


async def _close(websocket: WebSocket, code: int, reason: str = "") -> None:
    """Close if still open; bounded, since a client that stopped reading never takes it."""
    if (
        websocket.application_state is not WebSocketState.CONNECTED
        or websocket.client_state is not WebSocketState.CONNECTED
    ):
        return
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError, TimeoutError):
        async with asyncio.timeout(CLOSE_TIMEOUT_S):  # hung up, stopped reading, or stopping
            await websocket.close(code, reason)


async def _stored_call_parameters(websocket: WebSocket, call_sid: str) -> dict[str, str] | None:
    """What a voice webhook stored for this call (PUT /v1/twilio/calls/{call_sid}); None when
    nothing was, or when Redis fails (the call goes on with its TwiML parameters: logged)."""
    calls: CallParameters = websocket.app.state.calls
    try:
        return await calls.get(call_sid, now_s=time.time())
    except SharedStateUnavailable as exc:
        websocket.app.state.runtime.metrics.shared_state_failures.labels(operation="call_parameters").inc()
        log.warning("stored call parameters unavailable", extra={"call_sid": call_sid, "error": str(exc)})
        return None


@router.websocket("/v1/twilio")
@admission_controlled
async def twilio(websocket: WebSocket) -> None:
    """Twilio Media Streams, bidirectional (`<Connect><Stream url="wss://HOST/v1/twilio">`):
    a Conversation behind the TwilioMediaStream adapter. docs/twilio.md has the set-up."""
    runtime: Runtime = websocket.app.state.runtime
    if runtime.sessions.is_draining:
        await _refuse_shutting_down(websocket)
        return
    settings = runtime.settings
    token = settings.twilio_auth_token
    if token is not None and not upgrade_is_signed(
        websocket.headers, websocket.scope, token.get_secret_value(), settings.twilio_stream_url
    ):
        log.warning(
            "twilio signature rejected", extra={"client_host": getattr(websocket.client, "host", None)}
        )
        await websocket.close(CLOSE_POLICY_VIOLATION, "invalid X-Twilio-Signature")  # before accept: HTTP 403
        return
    await websocket.accept()
    guard = TransportGuard(StarletteTransport(websocket), guard_options(settings))
    stream = TwilioMediaStream(
        guard,
        TwilioOptions(dtmf=settings.twilio_dtmf, dtmf_pause_ms=settings.twilio_dtmf_pause_ms),
    )
    code, reason = CLOSE_NORMAL, ""
    requested: str | None = None
    conversation: Conversation | None = None
    try:
        start = await stream.start()
        if start.call_sid:
            stored = await _stored_call_parameters(websocket, start.call_sid)
            if stored:
                stream.add_parameters(stored)
                start = stream.started or start
        parameters = {**start.custom_parameters, "call_sid": start.call_sid or ""}
        setup = await _session_setup(runtime, websocket, parameters)
        requested = setup.profile or start.custom_parameters.get("model")
        model = await runtime.model_for(requested)
        grounding = await runtime.grounding_for(setup.knowledge)
        ids = {"call_sid": start.call_sid or "", "stream_sid": start.stream_sid}
        conversation = Conversation(
            stream,  # the call's settings (customParameters instructions/voice too) apply at its start
            model,
            runtime.vad,
            runtime.conversation_options(
                requested, setup, grounding, start.custom_parameters.get("greeting")
            ),
            runtime.metrics,
            on_event=runtime.on_event,
            tools=runtime.tools,
            metadata={**start.custom_parameters, **ids, **setup.metadata},
        )
        await runtime.sessions.run(conversation)
        code, reason = _shutdown_end(runtime) or (code, reason)
    except TransportClosed:
        pass  # the call ended (stop, hang-up) or the stream broke the protocol: see stream.violation
    except BackendUnavailable as exc:
        log.error("model unavailable", extra={"model": requested, "reason": str(exc)})
        code, reason = CLOSE_TRY_AGAIN_LATER, "model unavailable"
    except KnowledgeFileError as exc:
        log.error("knowledge unavailable", extra={"reason": str(exc)})
        code, reason = CLOSE_TRY_AGAIN_LATER, "knowledge unavailable"
    except Exception:
        log.exception("twilio session failed", extra={"call_sid": getattr(stream.started, "call_sid", None)})
        code, reason = CLOSE_INTERNAL_ERROR, "internal error; see server logs"
    finally:
        await stream.aclose()
    if stream.violation is not None:
        runtime.metrics.errors.labels(code=stream.violation.code).inc()
        code = CLOSE_UNSUPPORTED_DATA if stream.violation.code == "binary_frame" else CLOSE_POLICY_VIOLATION
        reason = close_reason(str(stream.violation))
    code, reason = _server_end(runtime, conversation, guard) or (code, reason)
    await _close(websocket, code, reason)
