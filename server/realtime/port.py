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
from server.realtime.function_calls import (
    client_tool_specs,
    function_call_events,
    function_call_item,
    function_call_output_item,
)
from server.realtime.images import MAX_IMAGES_PER_ITEM, parse_input_image
from server.realtime.items import ItemLog
from server.realtime.responses import parse_response_create
from server.realtime.wire import (
    Dialect,
    EventWriter,
    InputAudioAppend,
    InputAudioClear,
    InputAudioCommit,
    ItemCreate,
    ItemDelete,
    ItemRetrieve,
    ItemTruncate,
    OutputAudioClear,
    ResponseCancel,
    ResponseCreate,
    SessionUpdate,
    TranscriptionSessionUpdate,
    apply_session_update,
    apply_transcription_session_update,
    decode_base64_audio,
    is_beta_session_shape,
    parse_client_event,
)
from server.streaming.commands import (
    AddAssistantText,
    AddFunctionCall,
    AddFunctionOutput,
    AddSystemText,
    AddUserText,
    AppendAudio,
    CancelResponse,
    ClearAudio,
    ClearOutputAudio,
    Command,
    CommitAudio,
    DeleteItem,
    Rejected,
    RetrieveItem,
    TruncateItem,
    UpdateSession,
)
from server.streaming.outputs import (
    AssistantTextAdded,
    Failed,
    FunctionCallAdded,
    FunctionCallMade,
    FunctionOutputAdded,
    IdleTimedOut,
    InputCleared,
    InputCommitted,
    ItemDeleted,
    ItemRequested,
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
    SystemTextAdded,
    TranscriptCompleted,
    TranscriptDelta,
    TranscriptFailed,
    UserAudioAdded,
    UserTextAdded,
)
from server.streaming.port import SessionView, TextTransport
from server.streaming.session_config import SessionConfig

# an assistant message's parts that carry what it said (GA and beta names; audio by transcript)
_ASSISTANT_PARTS = frozenset({"output_text", "text", "output_audio", "audio"})


def response_metadata(metadata: Mapping[str, str] | None, answer_path: str | None) -> dict[str, str] | None:
    """A response's metadata: the client's, and how Voxgate answered (`voxgate_answer_path`,
    under operator knowledge: server/knowledge)."""
    if answer_path is None:
        return None if metadata is None else dict(metadata)
    return {**(metadata or {}), "voxgate_answer_path": answer_path}


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
        self._items = ItemLog()  # what conversation.item.retrieve answers from
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
            case TranscriptionSessionUpdate():
                return self._transcription_session_update(event)
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
            case ItemRetrieve():
                return RetrieveItem(event.item_id, event.event_id)
            case ItemDelete():
                return DeleteItem(event.item_id, event.event_id)
            case ResponseCreate():
                if self._session.config.session_type == "transcription":
                    raise ProtocolViolation(
                        "response.create: this is a transcription session, which never replies;"
                        " open a realtime session for replies",
                        code="unsupported_event",
                        param="type",
                    )
                return parse_response_create(event.response or {}, self._session.config, event.event_id)
            case ResponseCancel():
                return CancelResponse(event.response_id, event.event_id)
            case OutputAudioClear():
                return ClearOutputAudio(event.event_id)
        raise ProtocolViolation(f"unexpected event {type(event).__name__}", code="invalid_event")

    def _session_update(self, session: Mapping[str, Any], event_id: str | None) -> UpdateSession:
        assert self._session is not None
        config = self._session.config.copy()
        apply_session_update(config, dict(session))
        param = "session.input_audio_transcription" if is_beta_session_shape(dict(session)) else None
        self._check_language(config, param or "session.audio.input.transcription")
        tools = None
        if "tools" in session:
            tools = client_tool_specs(session["tools"], self._session.server_tool_names())
        return UpdateSession(config, tools, event_id)

    def _transcription_session_update(self, event: TranscriptionSessionUpdate) -> UpdateSession:
        """Beta only: the session becomes (or stays) a transcription session."""
        assert self._session is not None
        if not self._dialect_fixed:
            self._events = EventWriter(Dialect.BETA)
            self._dialect_fixed = True
        config = self._session.config.copy()
        apply_transcription_session_update(config, dict(event.session))
        self._check_language(config, "session.input_audio_transcription")
        return UpdateSession(config, None, event.event_id)

    def _check_language(self, config: SessionConfig, param: str) -> None:
        """A language the session's recogniser cannot transcribe is refused, not transcribed
        as English."""
        assert self._session is not None
        language, known = config.transcription_language, self._session.transcription_languages()
        if language is None or known is None or language in known:
            return
        listed = ", ".join(sorted(known)) if len(known) <= 12 else f"{len(known)} languages"
        raise ProtocolViolation(
            f"{param}.language {language!r} is not one this server's recogniser transcribes"
            f" ({listed}); Whisper base knows 99"
            ' (VOXGATE_ASR=whisper, VOXGATE_BACKEND_OPTIONS={"whisper": {"model": "base"}})',
            code="unsupported_language",
            param=f"{param}.language",
        )

    def _item_create(self, event: ItemCreate) -> Command:
        item = event.item
        last = self._items.last_added_id
        if event.previous_item_id is not None and event.previous_item_id != last:
            raise ProtocolViolation(
                "items are added at the end of the conversation: previous_item_id must be the last "
                f"item ({last or 'none yet'}) or left out",
                code="unsupported_parameter",
                param="previous_item_id",
            )
        if item.type == "function_call_output":
            return AddFunctionOutput(item.call_id, item.output, item.id, event.event_id)
        if item.type == "function_call":
            if not item.call_id or not item.name:
                raise ProtocolViolation(
                    "a function_call item needs call_id and name",
                    code="missing_field",
                    param="item.call_id" if not item.call_id else "item.name",
                )
            return AddFunctionCall(item.call_id, item.name, item.arguments or "{}", item.id, event.event_id)
        if item.type == "message" and item.role == "assistant":
            said = [p.text or p.transcript for p in item.content if p.type in _ASSISTANT_PARTS]
            if not any(said):
                raise ProtocolViolation(
                    "assistant message needs an output_text (or text) content part",
                    code="missing_field",
                    param="item.content",
                )
            return AddAssistantText(" ".join(t for t in said if t), item.id, event.event_id)
        if item.type == "message" and item.role == "system":
            notes = [p.text for p in item.content if p.type in ("input_text", "text") and p.text]
            if not notes or len(notes) != len(item.content):
                raise ProtocolViolation(
                    "a system message takes input_text parts with text",
                    code="missing_field",
                    param="item.content",
                )
            return AddSystemText(" ".join(notes), item.id, event.event_id)
        if item.type != "message" or item.role != "user":
            raise ProtocolViolation(
                f"conversation.item.create supports user, system and assistant messages; got {item.type}"
                + (f"/{item.role}" if item.role else ""),
                code="unsupported_item_type",
                param="item.type",
            )
        for index, part in enumerate(item.content):
            if part.type not in ("input_text", "input_image"):
                raise ProtocolViolation(
                    f"a user message takes input_text and input_image parts here, not {part.type!r} "
                    "(send audio with input_audio_buffer.append)",
                    code="unsupported_content_type",
                    param=f"item.content[{index}].type",
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

    # --- outbound ------------------------------------------------------------------------------

    async def send(self, output: Output) -> None:
        for event in self.render(output):
            await self._transport.send_text(json.dumps(event))

    def render(self, output: Output) -> list[dict[str, Any]]:
        events = self._render(output)
        if not isinstance(output, ResponseAudio):  # audio (every 20 ms) carries no item to keep
            self._items.remember(events)
        return events

    def _render(self, output: Output) -> list[dict[str, Any]]:
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
                return [w.session_event(True, output.config)]
            case SessionUpdated():
                return [w.session_event(False, output.config)]
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
            case SystemTextAdded():
                note = w.message_item(output.item_id, "system", [{"type": "input_text", "text": output.text}])
                return w.item_added(note, output.previous_item_id)
            case AssistantTextAdded():
                item = w.assistant_item(output.item_id, "completed", w.assistant_part(output.text, False))
                return w.item_added(item, output.previous_item_id)
            case FunctionCallAdded():
                call = output.call
                replayed = function_call_item(
                    call.item_id, call.call_id, call.name, call.arguments_json, "completed"
                )
                return w.item_added(replayed, output.previous_item_id)
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
                    metadata=output.metadata,
                    out_of_band=output.out_of_band,
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
                    metadata=response_metadata(output.metadata, output.answer_path),
                    out_of_band=output.out_of_band,
                )
            case ItemDeleted():
                return [w.event("conversation.item.deleted", item_id=output.item_id)]
            case ItemRequested():
                known = self._items.get(output.item_id)
                if known is None:
                    return [
                        w.error(
                            f"item {output.item_id!r} is not in this conversation",
                            code="item_not_found",
                            param="item_id",
                            event_id=output.event_id,
                        )
                    ]
                return [w.event("conversation.item.retrieved", item=known)]
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
