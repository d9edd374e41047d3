"""HTTP and websocket routes. The only place that picks close codes."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from fastapi import APIRouter, Request, Response, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from server.agent import SessionRequest, SessionSetup
from server.errors import BackendUnavailable
from server.streaming.conversation import Conversation, TransportClosed
from server.telephony.twilio import TwilioMediaStream, TwilioOptions, upgrade_is_signed
from server.wire import Dialect, new_id

log = logging.getLogger(__name__)

router = APIRouter()

CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013


class StarletteTransport:
    """Adapts a Starlette WebSocket to the Conversation's Transport."""

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
async def healthz(request: Request) -> dict[str, object]:
    return {"status": "ok", "sessions": request.app.state.runtime.active_sessions()}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(
        request.app.state.runtime.metrics.render(),
        media_type="text/plain; version=0.0.4; charset=utf-8",
    )


def _dialect(websocket: WebSocket) -> Dialect:
    beta = websocket.headers.get("openai-beta", "")
    return Dialect.BETA if "realtime=v1" in beta.replace(" ", "") else Dialect.GA


def _subprotocol(websocket: WebSocket) -> str | None:
    offered = websocket.scope.get("subprotocols") or []
    return "realtime" if "realtime" in offered else None


async def _session_setup(runtime: Any, websocket: WebSocket) -> SessionSetup:
    """Ask the embedding backend's hook (if any) how to set this session up."""
    if runtime.session_setup is None:
        return SessionSetup()
    request = SessionRequest(
        path=websocket.url.path,
        query=dict(websocket.query_params),
        headers={k.lower(): v for k, v in websocket.headers.items()},
        client_host=websocket.client.host if websocket.client else None,
    )
    setup: SessionSetup = await runtime.session_setup(request)
    return setup


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket) -> None:
    runtime = websocket.app.state.runtime
    await websocket.accept(subprotocol=_subprotocol(websocket))
    setup = await _session_setup(runtime, websocket)
    requested = setup.profile or websocket.query_params.get("model")
    try:
        model = await runtime.model_for(requested)
    except BackendUnavailable as exc:
        log.error("model unavailable", extra={"model": requested, "reason": str(exc)})
        await websocket.send_json(
            {
                "type": "error",
                "event_id": new_id("event"),
                "error": {
                    "type": "server_error",
                    "code": "model_unavailable",
                    "message": str(exc),
                    "param": "model",
                    "event_id": None,
                },
            }
        )
        await websocket.close(CLOSE_TRY_AGAIN_LATER, "model unavailable")
        return
    conversation = Conversation(
        StarletteTransport(websocket),
        model,
        runtime.vad,
        runtime.conversation_options(model=requested, instructions=setup.instructions, voice=setup.voice),
        runtime.metrics,
        _dialect(websocket),
        on_event=runtime.on_event,
        metadata=setup.metadata,
    )
    try:
        await conversation.run()
    except Exception:
        log.exception("session failed", extra={"session_id": conversation.config.id})
        if websocket.application_state is WebSocketState.CONNECTED:
            await websocket.close(CLOSE_INTERNAL_ERROR, "internal error; see server logs")
        return
    if (
        websocket.application_state is WebSocketState.CONNECTED
        and websocket.client_state is WebSocketState.CONNECTED
    ):
        await websocket.close(1000)


def _close_reason(text: str) -> str:
    """A websocket close reason: at most 123 bytes of UTF-8."""
    return text.encode()[:123].decode(errors="ignore")


@router.websocket("/v1/twilio")
async def twilio(websocket: WebSocket) -> None:
    """Twilio Media Streams, bidirectional (`<Connect><Stream url="wss://HOST/v1/twilio">`):
    a Conversation behind the TwilioMediaStream adapter. docs/twilio.md has the set-up."""
    runtime = websocket.app.state.runtime
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
    stream = TwilioMediaStream(
        StarletteTransport(websocket),
        TwilioOptions(dtmf=settings.twilio_dtmf, dtmf_pause_ms=settings.twilio_dtmf_pause_ms),
    )
    code, reason = 1000, ""
    requested: str | None = None
    try:
        start = await stream.start()
        setup = await _session_setup(runtime, websocket)
        requested = setup.profile or start.custom_parameters.get("model")
        model = await runtime.model_for(requested)
        ids = {"call_sid": start.call_sid or "", "stream_sid": start.stream_sid}
        conversation = Conversation(
            stream,  # customParameters instructions/voice arrive as the first session.update
            model,
            runtime.vad,
            runtime.conversation_options(model=requested, instructions=setup.instructions, voice=setup.voice),
            runtime.metrics,
            Dialect.GA,
            on_event=runtime.on_event,
            metadata={**start.custom_parameters, **ids, **setup.metadata},
        )
        await conversation.run()
    except TransportClosed:
        pass  # the call ended (stop, hang-up) or the stream broke the protocol: see stream.violation
    except BackendUnavailable as exc:
        log.error("model unavailable", extra={"model": requested, "reason": str(exc)})
        code, reason = CLOSE_TRY_AGAIN_LATER, "model unavailable"
    except Exception:
        log.exception("twilio session failed", extra={"call_sid": getattr(stream.started, "call_sid", None)})
        code, reason = CLOSE_INTERNAL_ERROR, "internal error; see server logs"
    finally:
        await stream.aclose()
    if stream.violation is not None:
        runtime.metrics.errors.labels(code=stream.violation.code).inc()
        code = CLOSE_UNSUPPORTED_DATA if stream.violation.code == "binary_frame" else CLOSE_POLICY_VIOLATION
        reason = _close_reason(str(stream.violation))
    if (
        websocket.application_state is WebSocketState.CONNECTED
        and websocket.client_state is WebSocketState.CONNECTED
    ):
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # hung up, or the server is stopping
            await websocket.close(code, reason)
