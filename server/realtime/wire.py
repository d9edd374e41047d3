"""The OpenAI Realtime wire protocol, both naming dialects (beta `realtime=v1` and GA).

Client events are parsed once into typed pydantic models (`parse_client_event`); anything
malformed raises `ProtocolViolation` with the `error.code` to report. Server events are built
by `EventWriter`, which names events and shapes objects in the client's dialect.

No asyncio, no sockets here.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from server.audio import AudioFormat, Encoding
from server.errors import ProtocolViolation
from server.ids import new_id as new_id  # re-exported: the ids of the events built here
from server.model.base import ImageInput
from server.realtime.session_update import apply_session_update as apply_session_update  # re-exported
from server.realtime.session_update import (  # re-exported
    apply_transcription_session_update as apply_transcription_session_update,
)
from server.realtime.session_update import is_beta_session_shape as is_beta_session_shape  # re-exported
from server.realtime.session_update import vars_of
from server.streaming.session_config import SessionConfig, TurnDetectionConfig
from server.streaming.session_config import forced_tool_name as forced_tool_name  # re-exported


class Dialect(Enum):
    BETA = "beta"
    GA = "ga"


MAX_APPEND_AUDIO_BYTES = 15 * 1024 * 1024  # decoded audio in one append, as OpenAI's limit


# --- client events -----------------------------------------------------------------------


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore")
    event_id: str | None = None


class SessionUpdate(_Event):
    type: Literal["session.update"]
    session: dict[str, Any]


class InputAudioAppend(_Event):
    type: Literal["input_audio_buffer.append"]
    audio: str


class InputAudioCommit(_Event):
    type: Literal["input_audio_buffer.commit"]


class InputAudioClear(_Event):
    type: Literal["input_audio_buffer.clear"]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None
    audio: str | None = None
    transcript: str | None = None
    image_url: str | None = None  # input_image: a data URL (server/realtime/images.py)
    detail: str | None = None


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str | None = None
    type: Literal["message", "function_call", "function_call_output"]
    role: Literal["user", "assistant", "system"] | None = None
    content: list[ContentPart] = Field(default_factory=list)
    call_id: str | None = None
    output: str | None = None
    name: str | None = None
    arguments: str | None = None


class ItemCreate(_Event):
    type: Literal["conversation.item.create"]
    previous_item_id: str | None = None
    item: ItemIn


class ItemTruncate(_Event):
    type: Literal["conversation.item.truncate"]
    item_id: str
    content_index: int = Field(ge=0)
    audio_end_ms: int = Field(ge=0)


class ItemDelete(_Event):
    type: Literal["conversation.item.delete"]
    item_id: str


class ItemRetrieve(_Event):
    type: Literal["conversation.item.retrieve"]
    item_id: str


class TranscriptionSessionUpdate(_Event):
    """Beta: make this a transcription session (session_update.py)."""

    type: Literal["transcription_session.update"]
    session: dict[str, Any]


class ResponseCreate(_Event):
    type: Literal["response.create"]
    response: dict[str, Any] | None = None


class ResponseCancel(_Event):
    type: Literal["response.cancel"]
    response_id: str | None = None


class OutputAudioClear(_Event):
    type: Literal["output_audio_buffer.clear"]


ClientEvent = Annotated[
    SessionUpdate
    | InputAudioAppend
    | InputAudioCommit
    | InputAudioClear
    | ItemCreate
    | ItemTruncate
    | ItemDelete
    | ItemRetrieve
    | ResponseCreate
    | ResponseCancel
    | OutputAudioClear
    | TranscriptionSessionUpdate,
    Field(discriminator="type"),
]
_CLIENT_EVENT: TypeAdapter[ClientEvent] = TypeAdapter(ClientEvent)
_INPUT_AUDIO_APPEND = InputAudioAppend.__pydantic_validator__
CLIENT_EVENT_TYPES = frozenset(
    (
        "session.update",
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
        "input_audio_buffer.clear",
        "conversation.item.create",
        "conversation.item.truncate",
        "conversation.item.delete",
        "conversation.item.retrieve",
        "response.create",
        "response.cancel",
        "output_audio_buffer.clear",
        "transcription_session.update",
    )
)


def parse_client_event(text: str) -> ClientEvent:
    """Parse one JSON text frame; raise ProtocolViolation with a precise code otherwise."""
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolViolation(f"message is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(raw, dict):
        raise ProtocolViolation("message must be a JSON object", code="invalid_json")
    if raw.get("type") == "input_audio_buffer.append":
        # an append arrives every 20 ms per session, so it skips the union adapter's Python
        # wrapper (about 40 % of validating one); whatever the model's own validator rejects
        # takes the general path, so errors read exactly as for any other event
        try:
            append: InputAudioAppend = _INPUT_AUDIO_APPEND.validate_python(raw)
        except ValidationError:
            pass
        else:
            return append
    return _validate_client_event(raw)


def _validate_client_event(raw: dict[str, Any]) -> ClientEvent:
    """Any client event, through the discriminated union; ProtocolViolation if it is invalid."""
    event_type = raw.get("type")
    if not isinstance(event_type, str):
        raise ProtocolViolation("message has no string 'type'", code="missing_field", param="type")
    if event_type not in CLIENT_EVENT_TYPES:
        raise ProtocolViolation(f"unknown event type {event_type[:80]!r}", code="unknown_event", param="type")
    try:
        return _CLIENT_EVENT.validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or event_type
        code = "missing_field" if first["type"] == "missing" else "invalid_value"
        raise ProtocolViolation(f"{event_type}: {where}: {first['msg']}", code=code, param=where) from exc


def decode_base64_audio(data: str, fmt: AudioFormat) -> bytes:
    too_large = ProtocolViolation(
        "input_audio_buffer.append carries more than 15 MiB of audio",
        code="audio_too_large",
        param="audio",
    )
    if len(data) > (MAX_APPEND_AUDIO_BYTES + 2) // 3 * 4 + 4:
        raise too_large
    try:
        audio = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolViolation("audio is not valid base64", code="invalid_audio", param="audio") from exc
    if len(audio) > MAX_APPEND_AUDIO_BYTES:
        raise too_large
    if fmt.encoding is Encoding.PCM16 and len(audio) % 2:
        raise ProtocolViolation(
            "pcm16 audio must have an even number of bytes", code="invalid_audio", param="audio"
        )
    return audio


# --- server events -----------------------------------------------------------------------


def _beta_format_name(fmt: AudioFormat) -> str:
    return {Encoding.PCM16: "pcm16", Encoding.ULAW: "g711_ulaw", Encoding.ALAW: "g711_alaw"}[fmt.encoding]


def _ga_format_obj(fmt: AudioFormat) -> dict[str, Any]:
    if fmt.encoding is Encoding.PCM16:
        return {"type": "audio/pcm", "rate": fmt.sample_rate_hz}
    return {"type": "audio/pcmu" if fmt.encoding is Encoding.ULAW else "audio/pcma"}


def _noise_reduction_obj(noise_reduction: str | None) -> dict[str, str] | None:
    return None if noise_reduction is None else {"type": noise_reduction}


def _turn_detection_obj(td: TurnDetectionConfig | None) -> dict[str, Any] | None:
    return None if td is None else vars_of(td)


def _transcription_obj(config: SessionConfig) -> dict[str, Any] | None:
    if config.transcription_model is None:
        return None
    return {
        "model": config.transcription_model,
        "language": config.transcription_language,
        "prompt": config.transcription_prompt,
    }


class EventWriter:
    """Builds server events (dicts ready for json.dumps) in one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect

    @property
    def is_beta(self) -> bool:
        return self.dialect is Dialect.BETA

    def event(self, type_: str, **fields: Any) -> dict[str, Any]:
        return {"type": type_, "event_id": new_id("event"), **fields}

    # names that differ between dialects
    @property
    def audio_delta(self) -> str:
        return "response.audio.delta" if self.is_beta else "response.output_audio.delta"

    @property
    def audio_done(self) -> str:
        return "response.audio.done" if self.is_beta else "response.output_audio.done"

    @property
    def transcript_delta(self) -> str:
        return "response.audio_transcript.delta" if self.is_beta else "response.output_audio_transcript.delta"

    @property
    def transcript_done(self) -> str:
        return "response.audio_transcript.done" if self.is_beta else "response.output_audio_transcript.done"

    @property
    def text_delta(self) -> str:
        return "response.text.delta" if self.is_beta else "response.output_text.delta"

    @property
    def text_done(self) -> str:
        return "response.text.done" if self.is_beta else "response.output_text.done"

    def session_event(self, created: bool, config: SessionConfig) -> dict[str, Any]:
        """`session.created`/`.updated`; a beta transcription session's are
        `transcription_session.created`/`.updated`."""
        prefix = (
            "transcription_session" if self.is_beta and config.session_type == "transcription" else "session"
        )
        return self.event(f"{prefix}.{'created' if created else 'updated'}", session=self.session(config))

    def session(self, config: SessionConfig) -> dict[str, Any]:
        if config.session_type == "transcription":
            return self.transcription_session(config)
        if self.is_beta:
            return {
                "id": config.id,
                "object": "realtime.session",
                "model": config.model,
                "modalities": ["text", "audio"] if "audio" in config.output_modalities else ["text"],
                "instructions": config.instructions,
                "voice": config.voice,
                "input_audio_format": _beta_format_name(config.input_format),
                "output_audio_format": _beta_format_name(config.output_format),
                "input_audio_transcription": _transcription_obj(config),
                "turn_detection": _turn_detection_obj(config.turn_detection),
                "input_audio_noise_reduction": _noise_reduction_obj(config.noise_reduction),
                "tools": config.tools,
                "tool_choice": config.tool_choice,
                "temperature": config.temperature,
                "max_response_output_tokens": config.max_output_tokens or "inf",
            }
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": config.id,
            "model": config.model,
            "output_modalities": config.output_modalities,
            "instructions": config.instructions,
            "audio": {
                "input": {
                    "format": _ga_format_obj(config.input_format),
                    "transcription": _transcription_obj(config),
                    "turn_detection": _turn_detection_obj(config.turn_detection),
                    "noise_reduction": _noise_reduction_obj(config.noise_reduction),
                },
                "output": {
                    "format": _ga_format_obj(config.output_format),
                    "voice": config.voice,
                    "speed": config.speed,
                },
            },
            "tools": config.tools,
            "tool_choice": config.tool_choice,
            "max_output_tokens": config.max_output_tokens or "inf",
        }

    def transcription_session(self, config: SessionConfig) -> dict[str, Any]:
        """A transcription session as OpenAI shows one (GA: type "transcription", input audio
        only; beta: the `transcription_session` object)."""
        if self.is_beta:
            return {
                "id": config.id,
                "object": "realtime.transcription_session",
                "modalities": ["text"],
                "input_audio_format": _beta_format_name(config.input_format),
                "input_audio_transcription": _transcription_obj(config),
                "turn_detection": _turn_detection_obj(config.turn_detection),
                "input_audio_noise_reduction": _noise_reduction_obj(config.noise_reduction),
                "include": None,
            }
        return {
            "type": "transcription",
            "object": "realtime.transcription_session",
            "id": config.id,
            "audio": {
                "input": {
                    "format": _ga_format_obj(config.input_format),
                    "transcription": _transcription_obj(config),
                    "turn_detection": _turn_detection_obj(config.turn_detection),
                    "noise_reduction": _noise_reduction_obj(config.noise_reduction),
                }
            },
            "include": None,
        }

    def error(
        self,
        message: str,
        *,
        code: str,
        param: str | None = None,
        event_id: str | None = None,
        type_: str = "invalid_request_error",
    ) -> dict[str, Any]:
        return self.event(
            "error",
            error={"type": type_, "code": code, "message": message, "param": param, "event_id": event_id},
        )

    # items
    def user_audio_item(self, item_id: str, transcript: str | None) -> dict[str, Any]:
        return {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": transcript}],
        }

    def message_item(self, item_id: str, role: str, content: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": role,
            "content": content,
        }

    def user_text_item(self, item_id: str, text: str, images: Sequence[ImageInput] = ()) -> dict[str, Any]:
        content: list[dict[str, Any]] = [{"type": "input_text", "text": text}] if text or not images else []
        content += [{"type": "input_image", "image_url": i.data_url, "detail": i.detail} for i in images]
        return self.message_item(item_id, "user", content)

    def assistant_part(self, transcript: str, audio: bool) -> dict[str, Any]:
        if audio:
            return {"type": "audio" if self.is_beta else "output_audio", "transcript": transcript}
        return {"type": "text" if self.is_beta else "output_text", "text": transcript}

    def assistant_item(self, item_id: str, status: str, part: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [] if part is None else [part],
        }

    def item_added(self, item: dict[str, Any], previous_item_id: str | None) -> list[dict[str, Any]]:
        if self.is_beta:
            return [self.event("conversation.item.created", previous_item_id=previous_item_id, item=item)]
        return [
            self.event("conversation.item.added", previous_item_id=previous_item_id, item=item),
            self.event("conversation.item.done", previous_item_id=previous_item_id, item=item),
        ]

    def response(
        self,
        response_id: str,
        status: str,
        output: list[dict[str, Any]],
        reason: str | None = None,
        config: SessionConfig | None = None,
        error: dict[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
        out_of_band: bool = False,
    ) -> dict[str, Any]:
        details: dict[str, Any] | None = None
        if status == "cancelled":
            details = {"type": "cancelled", "reason": reason}
        elif status == "incomplete":
            details = {"type": "incomplete", "reason": reason}
        elif status == "failed":
            details = {"type": "failed", "reason": reason, "error": error}
        body: dict[str, Any] = {
            "id": response_id,
            "object": "realtime.response",
            "status": status,
            "status_details": details,
            "output": output,
            "usage": None,
            "metadata": None if metadata is None else dict(metadata),
        }
        if out_of_band:
            body["conversation_id"] = None  # in no conversation (GA: `conversation: "none"`)
        if config is not None:
            if self.is_beta:
                body["modalities"] = ["text", "audio"] if "audio" in config.output_modalities else ["text"]
                body["voice"] = config.voice
                body["output_audio_format"] = _beta_format_name(config.output_format)
            else:
                body["output_modalities"] = config.output_modalities
                body["audio"] = {
                    "output": {"format": _ga_format_obj(config.output_format), "voice": config.voice}
                }
        return body

    # a response's lifecycle, in protocol order
    def response_opening(
        self,
        response_id: str,
        item_id: str,
        with_audio: bool,
        previous_item_id: str | None,
        config: SessionConfig,
        metadata: Mapping[str, str] | None = None,
        out_of_band: bool = False,
    ) -> list[dict[str, Any]]:
        """`out_of_band`: the item joins no conversation (no conversation.item.added)."""
        item = self.assistant_item(item_id, "in_progress", None)
        opened = self.response(
            response_id, "in_progress", [], config=config, metadata=metadata, out_of_band=out_of_band
        )
        return [
            self.event("response.created", response=opened),
            self.event("response.output_item.added", response_id=response_id, output_index=0, item=item),
            *([] if out_of_band else self.item_added(item, previous_item_id)),
            self.event(
                "response.content_part.added",
                response_id=response_id,
                item_id=item_id,
                output_index=0,
                content_index=0,
                part=self.assistant_part("", with_audio),
            ),
        ]

    def response_text_delta(
        self, response_id: str, item_id: str, with_audio: bool, delta: str
    ) -> dict[str, Any]:
        return self.event(
            self.transcript_delta if with_audio else self.text_delta,
            response_id=response_id,
            item_id=item_id,
            output_index=0,
            content_index=0,
            delta=delta,
        )

    def response_closing(
        self,
        response_id: str,
        item_id: str,
        with_audio: bool,
        transcript: str,
        status: str,
        config: SessionConfig,
        reason: str | None = None,
        error: dict[str, Any] | None = None,
        extra_output: Sequence[dict[str, Any]] = (),
        metadata: Mapping[str, str] | None = None,
        out_of_band: bool = False,
    ) -> list[dict[str, Any]]:
        """`extra_output`: the response's function_call items, listed after its message.
        `metadata`: the response object's metadata in response.done (the protocol's string
        map; Voxgate puts `voxgate_answer_path` there under grounding)."""
        part = self.assistant_part(transcript, with_audio)
        common: dict[str, Any] = {"response_id": response_id, "item_id": item_id, "output_index": 0}
        if with_audio:
            events = [
                self.event(self.audio_done, content_index=0, **common),
                self.event(self.transcript_done, content_index=0, transcript=transcript, **common),
            ]
        else:
            events = [self.event(self.text_done, content_index=0, text=transcript, **common)]
        item = self.assistant_item(item_id, "completed" if status == "completed" else "incomplete", part)
        return [
            *events,
            self.event("response.content_part.done", content_index=0, part=part, **common),
            self.event("response.output_item.done", response_id=response_id, output_index=0, item=item),
            self.event(
                "response.done",
                response=self.response(
                    response_id,
                    status,
                    [item, *extra_output],
                    reason=reason,
                    config=config,
                    error=error,
                    metadata=metadata,
                    out_of_band=out_of_band,
                ),
            ),
        ]
