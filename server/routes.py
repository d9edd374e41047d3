"""HTTP and websocket routes. The only place that picks close codes."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request, Response, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from server.agent import SessionRequest, SessionSetup
from server.errors import BackendUnavailable
from server.streaming.conversation import Conversation, TransportClosed
from server.wire import Dialect, new_id

log = logging.getLogger(__name__)

router = APIRouter()

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
