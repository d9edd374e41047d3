"""RealtimePort: the OpenAI Realtime protocol at the edge of a conversation.

A conversation speaks typed commands and outputs (server/streaming/commands.py, outputs.py)
through a `ClientPort`. This port is that for an OpenAI Realtime client on a websocket: it
parses the client's JSON events into commands, and renders outputs as server events in the
client's dialect (beta or GA, fixed by the connection or by the shape of the first
`session.update`). Nothing else in the server builds or parses this protocol's JSON.

    port = RealtimePort(transport, dialect, initial_session=grant.session)
    conversation = Conversation(port, ...)   # attaches itself: the port reads its settings

Bad input never ends the session here: a message that cannot be accepted becomes a `Rejected`
command, which the conversation answers with an `error` event.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from server.errors import ProtocolViolation
from server.model.base import ResponseOptions
from server.realtime.function_calls import (
    client_tool_specs,
    function_call_events,
    function_call_item,
    function_call_output_item,
)
from server.realtime.images import MAX_IMAGES_PER_ITEM, parse_input_image
from server.realtime.wire import (
    Dialect,
    EventWriter,
    InputAudioAppend,
    InputAudioClear,
    InputAudioCommit,
    ItemCreate,
    ItemDelete,
    ItemTruncate,
    OutputAudioClear,
    ResponseCancel,
    ResponseCreate,
    SessionUpdate,
    apply_session_update,
    decode_base64_audio,
    is_beta_session_shape,
    parse_client_event,
)
from server.streaming.commands import (
    AddFunctionOutput,
    AddUserText,
    AppendAudio,
    CancelResponse,
    ClearAudio,
    ClearOutputAudio,
    Command,
    CommitAudio,
    CreateResponse,
    Rejected,
    TruncateItem,
    UpdateSession,
)
from server.streaming.outputs import (
    Failed,
    FunctionCallMade,
    FunctionOutputAdded,
    IdleTimedOut,
    InputCleared,
    InputCommitted,
    ItemTruncated,
    Output,
    OutputCleared,
    ResponseAudio,
    ResponseEnded,
    ResponseStarted,
    ResponseText,
    SessionCreated,
    SessionExpiring,
    SessionUpdated,
    SpeechStarted,
    SpeechStopped,
    TranscriptCompleted,
    TranscriptDelta,
    TranscriptFailed,
    UserAudioAdded,
    UserTextAdded,
)
from server.streaming.port import SessionView, TextTransport


class RealtimePort:
    """A conversation's ClientPort for an OpenAI Realtime client."""

    def __init__(
        self,
        transport: TextTransport,
        dialect: Dialect,
        initial_session: Mapping[str, Any] | None = None,
    ) -> None:
        """`initial_session`: a session object (validated when a client secret was minted)
        applied before `session.created`."""
        self._transport = transport
        self._events = EventWriter(dialect)
        self._dialect_fixed = dialect is Dialect.BETA
        self._initial_session = dict(initial_session or {})
        self._session: SessionView | None = None

    def attach(self, session: SessionView) -> None:
        self._session = session

    def opening_settings(self) -> UpdateSession | None:
        if not self._initial_session:
            return None
        return self._session_update(self._initial_session, None)

    # --- inbound -------------------------------------------------------------------------------

    async def receive(self) -> Command:
        message = await self._transport.receive()
        if isinstance(message, bytes):
            return Rejected(
                ProtocolViolation(
                    "binary frames are not part of this protocol; send JSON text events", code="invalid_frame"
                )
            )
        event_id: str | None = None
        try:
            event = parse_client_event(message)
            event_id = event.event_id
            return self._command(event)
        except ProtocolViolation as exc:
            return Rejected(exc, event_id)

    def _command(self, event: Any) -> Command:
        assert self._session is not None
        match event:
            case SessionUpdate():
                if not self._dialect_fixed:
                    if is_beta_session_shape(event.session):
                        self._events = EventWriter(Dialect.BETA)
                    self._dialect_fixed = True
                return self._session_update(event.session, event.event_id)
            case InputAudioAppend():
                audio = decode_base64_audio(event.audio, self._session.config.input_format)
                return AppendAudio(audio, event.event_id)
            case InputAudioCommit():
                return CommitAudio(event.event_id)
            case InputAudioClear():
                return ClearAudio(event.event_id)
            case ItemCreate():
                return self._item_create(event)
            case ItemTruncate():
                return TruncateItem(event.item_id, event.content_index, event.audio_end_ms, event.event_id)
            case ItemDelete():
                raise ProtocolViolation(
                    "conversation.item.delete is not supported by this server",
                    code="unsupported_event",
                    param="type",
                )
            case ResponseCreate():
                return CreateResponse(self._response_options(event.response or {}), event.event_id)
            case ResponseCancel():
                return CancelResponse(event.response_id, event.event_id)
            case OutputAudioClear():
                return ClearOutputAudio(event.event_id)
        raise ProtocolViolation(f"unexpected event {type(event).__name__}", code="invalid_event")

    def _session_update(self, session: Mapping[str, Any], event_id: str | None) -> UpdateSession:
        assert self._session is not None
        config = self._session.config.copy()
        apply_session_update(config, dict(session))
        tools = None
        if "tools" in session:
            tools = client_tool_specs(session["tools"], self._session.server_tool_names())
        return UpdateSession(config, tools, event_id)

    def _item_create(self, event: ItemCreate) -> Command:
        item = event.item
        if item.type == "function_call_output":
            return AddFunctionOutput(item.call_id, item.output, item.id, event.event_id)
        if item.type != "message" or item.role != "user":
            raise ProtocolViolation(
                f"conversation.item.create supports user messages; got {item.type}"
                + (f"/{item.role}" if item.role else ""),
                code="unsupported_item_type",
                param="item.type",
            )
        texts = [p.text for p in item.content if p.type == "input_text" and p.text]
        images = [
            parse_input_image(p.image_url, p.detail, f"item.content[{index}]")
            for index, p in enumerate(item.content)
            if p.type == "input_image"
        ]
        if len(images) > MAX_IMAGES_PER_ITEM:
            raise ProtocolViolation(
                f"at most {MAX_IMAGES_PER_ITEM} images in one item",
                code="invalid_value",
                param="item.content",
            )
        if not texts and not images:
            raise ProtocolViolation(
                "user message needs an input_text or input_image content part",
                code="missing_field",
                param="item.content",
            )
        return AddUserText(" ".join(texts), item.id, event.event_id, tuple(images))

    def _response_options(self, body: dict[str, Any]) -> ResponseOptions:
        assert self._session is not None
        config = self._session.config
        modalities = body.get("output_modalities") or body.get("modalities") or config.output_modalities
        if not isinstance(modalities, list) or any(m not in ("audio", "text") for m in modalities):
            raise ProtocolViolation(
                "response modalities must list 'audio' and/or 'text'",
                code="invalid_value",
                param="response.output_modalities",
            )
        audio = body.get("audio") or {}
        output = (audio.get("output") or {}) if isinstance(audio, dict) else None
        if not isinstance(output, dict):
            raise ProtocolViolation(
                "response.audio and response.audio.output must be objects",
                code="invalid_value",
                param="response.audio",
            )
        instructions = body.get("instructions")
        voice = body.get("voice") or output.get("voice")
        if instructions is not None and not isinstance(instructions, str):
            raise ProtocolViolation(
                "response.instructions must be a string", code="invalid_value", param="response.instructions"
            )
        if voice is not None and not isinstance(voice, str):
            raise ProtocolViolation(
                "response voice must be a string", code="invalid_value", param="response.voice"
            )
        return ResponseOptions(with_audio="audio" in modalities, instructions=instructions, voice=voice)

    # --- outbound ------------------------------------------------------------------------------

    async def send(self, output: Output) -> None:
        for event in self.render(output):
            await self._transport.send_text(json.dumps(event))

    def render(self, output: Output) -> list[dict[str, Any]]:
        """The protocol events of one output, in order."""
        w = self._events
        match output:
            case ResponseAudio():
                return [
                    w.event(
                        w.audio_delta,
                        response_id=output.response_id,
                        item_id=output.item_id,
                        output_index=0,
                        content_index=0,
                        delta=base64.b64encode(output.audio).decode("ascii"),
                    )
                ]
            case ResponseText():
                return [
                    w.response_text_delta(output.response_id, output.item_id, output.with_audio, output.text)
                ]
            case SessionCreated():
                return [w.event("session.created", session=w.session(output.config))]
            case SessionUpdated():
                return [w.event("session.updated", session=w.session(output.config))]
            case SessionExpiring():
                return [
                    w.event(
                        "session.expiring", expires_at=output.expires_at, seconds_left=output.seconds_left
                    )
                ]
            case Failed():
                return [
                    w.error(
                        output.message,
                        code=output.code,
                        param=output.param,
                        event_id=output.event_id,
                        type_=output.type,
                    )
                ]
            case SpeechStarted():
                return [
                    w.event(
                        "input_audio_buffer.speech_started",
                        audio_start_ms=output.audio_start_ms,
                        item_id=output.item_id,
                    )
                ]
            case SpeechStopped():
                return [
                    w.event(
                        "input_audio_buffer.speech_stopped",
                        audio_end_ms=output.audio_end_ms,
                        item_id=output.item_id,
                    )
                ]
            case InputCommitted():
                return [
                    w.event(
                        "input_audio_buffer.committed",
                        previous_item_id=output.previous_item_id,
                        item_id=output.item_id,
                    )
                ]
            case InputCleared():
                return [w.event("input_audio_buffer.cleared")]
            case OutputCleared():
                return [w.event("output_audio_buffer.cleared")]
            case IdleTimedOut():
                return [
                    w.event(
                        "input_audio_buffer.timeout_triggered",
                        audio_start_ms=output.audio_ms,
                        audio_end_ms=output.audio_ms,
                        item_id=output.item_id,
                    )
                ]
            case UserAudioAdded():
                return w.item_added(w.user_audio_item(output.item_id, None), output.previous_item_id)
            case UserTextAdded():
                item = w.user_text_item(output.item_id, output.text, output.images)
                return w.item_added(item, output.previous_item_id)
            case FunctionOutputAdded():
                item = function_call_output_item(output.item_id, output.call_id, output.output)
                return w.item_added(item, output.previous_item_id)
            case TranscriptDelta():
                return [
                    w.event(
                        "conversation.item.input_audio_transcription.delta",
                        item_id=output.item_id,
                        content_index=0,
                        delta=output.delta,
                    )
                ]
            case TranscriptCompleted():
                return [
                    w.event(
                        "conversation.item.input_audio_transcription.completed",
                        item_id=output.item_id,
                        content_index=0,
                        transcript=output.transcript,
                    )
                ]
            case TranscriptFailed():
                return [
                    w.event(
                        "conversation.item.input_audio_transcription.failed",
                        item_id=output.item_id,
                        content_index=0,
                        error=output.error,
                    )
                ]
            case ResponseStarted():
                return w.response_opening(
                    output.response_id,
                    output.item_id,
                    output.with_audio,
                    output.previous_item_id,
                    output.config,
                )
            case FunctionCallMade():
                call = output.call
                return function_call_events(
                    w,
                    output.response_id,
                    call.item_id,
                    output.output_index,
                    call.call_id,
                    call.name,
                    call.arguments_json,
                    output.previous_item_id,
                )
            case ResponseEnded():
                calls = [
                    function_call_item(c.item_id, c.call_id, c.name, c.arguments_json, "completed")
                    for c in output.function_calls
                ]
                return w.response_closing(
                    output.response_id,
                    output.item_id,
                    output.with_audio,
                    output.transcript,
                    output.status,
                    output.config,
                    reason=output.reason,
                    error=output.error,
                    extra_output=calls,
                    metadata=None
                    if output.answer_path is None
                    else {"voxgate_answer_path": output.answer_path},
                )
            case ItemTruncated():
                return [
                    w.event(
                        "conversation.item.truncated",
                        item_id=output.item_id,
                        content_index=0,
                        audio_end_ms=output.audio_end_ms,
                    )
                ]
        raise AssertionError(f"unrendered output {output!r}")
