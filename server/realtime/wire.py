"""The OpenAI Realtime wire protocol, both naming dialects (beta `realtime=v1` and GA).

Client events are parsed once into typed pydantic models (`parse_client_event`); anything
malformed raises `ProtocolViolation` with the `error.code` to report. Server events are built
by `EventWriter`, which names events and shapes objects in the client's dialect.

No asyncio, no sockets here.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from server.audio import ALAW_8K, ULAW_8K, AudioFormat, Encoding
from server.errors import ProtocolViolation


class Dialect(Enum):
    BETA = "beta"
    GA = "ga"


MAX_APPEND_AUDIO_BYTES = 15 * 1024 * 1024  # decoded audio in one append, as OpenAI's limit
SUPPORTED_PCM_RATES_HZ = (8_000, 16_000, 24_000, 44_100, 48_000)


def new_id(prefix: str) -> str:
    """`prefix` + "_" + 20 hex digits: 10 drawn at random once per process, then a counter.

    Unique within a process; two processes repeat each other's ids only if their random halves
    match (1 in 2**40). Ids name sessions, items, responses and events and are no secrets:
    nothing grants access by one, and they reveal their order of issue. The counter replaces
    an os.urandom read per id, i.e. per server event (one per 20 ms audio delta).
    """
    return f"{prefix}_{_id_stem}{next(_id_counter):010x}"


_id_counter = itertools.count()
_id_stem = secrets.token_hex(5)


def _new_id_stem() -> None:
    global _id_stem
    _id_stem = secrets.token_hex(5)


os.register_at_fork(after_in_child=_new_id_stem)  # a forked worker must not repeat its parent's ids


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
    | ResponseCreate
    | ResponseCancel
    | OutputAudioClear,
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
        "response.create",
        "response.cancel",
        "output_audio_buffer.clear",
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


# --- session configuration ---------------------------------------------------------------


@dataclass(slots=True)
class TurnDetectionConfig:
    type: str = "server_vad"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 300
    create_response: bool = True
    interrupt_response: bool = True
    idle_timeout_ms: int | None = None


@dataclass(slots=True)
class SessionConfig:
    """The canonical session settings, whatever dialect the client speaks."""

    id: str
    model: str
    instructions: str = ""
    voice: str = "default"
    input_format: AudioFormat = field(default_factory=lambda: AudioFormat(Encoding.PCM16, 24_000))
    output_format: AudioFormat = field(default_factory=lambda: AudioFormat(Encoding.PCM16, 24_000))
    turn_detection: TurnDetectionConfig | None = field(default_factory=TurnDetectionConfig)
    transcription_model: str | None = "voxgate-asr"
    output_modalities: list[str] = field(default_factory=lambda: ["audio"])
    temperature: float = 0.8
    max_output_tokens: int | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str | dict[str, str] = "auto"  # as on the wire: "auto" | "none" | "required" | a function


def is_beta_session_shape(session: dict[str, Any]) -> bool:
    beta_keys = {
        "input_audio_format",
        "output_audio_format",
        "modalities",
        "turn_detection",
        "input_audio_transcription",
        "max_response_output_tokens",
        "voice",
    }
    return session.get("type") is None and bool(beta_keys & session.keys())


def _beta_format(name: object, param: str) -> AudioFormat:
    if name == "pcm16":
        return AudioFormat(Encoding.PCM16, 24_000)
    if name == "g711_ulaw":
        return ULAW_8K
    if name == "g711_alaw":
        return ALAW_8K
    raise ProtocolViolation(
        f"unsupported audio format {name!r}; use pcm16, g711_ulaw or g711_alaw",
        code="invalid_value",
        param=param,
    )


def _ga_format(fmt: object, param: str) -> AudioFormat:
    if not isinstance(fmt, dict):
        raise ProtocolViolation(f"{param} must be an object", code="invalid_value", param=param)
    kind = fmt.get("type")
    if kind == "audio/pcm":
        rate = fmt.get("rate", 24_000)
        if rate not in SUPPORTED_PCM_RATES_HZ:
            raise ProtocolViolation(
                f"unsupported audio/pcm rate {rate!r}; use one of {SUPPORTED_PCM_RATES_HZ}",
                code="invalid_value",
                param=f"{param}.rate",
            )
        return AudioFormat(Encoding.PCM16, int(rate))
    if kind == "audio/pcmu":
        return ULAW_8K
    if kind == "audio/pcma":
        return ALAW_8K
    raise ProtocolViolation(
        f"unsupported audio format type {kind!r}; use audio/pcm, audio/pcmu or audio/pcma",
        code="invalid_value",
        param=f"{param}.type",
    )


def _check_type(value: object, kinds: type | tuple[type, ...], param: str) -> Any:
    if isinstance(value, bool) and kinds in (int, float, (int, float)):
        raise ProtocolViolation(f"{param} must be a number", code="invalid_value", param=param)
    if not isinstance(value, kinds):
        raise ProtocolViolation(f"{param} has the wrong type", code="invalid_value", param=param)
    return value


def _apply_turn_detection(config: SessionConfig, value: object, param: str) -> None:
    if value is None:
        config.turn_detection = None
        return
    if not isinstance(value, dict):
        raise ProtocolViolation(f"{param} must be an object or null", code="invalid_value", param=param)
    kind = value.get("type", "server_vad")
    if kind not in ("server_vad", "semantic_vad"):
        raise ProtocolViolation(
            f"unsupported turn_detection type {kind!r}", code="invalid_value", param=f"{param}.type"
        )
    td = config.turn_detection or TurnDetectionConfig()
    td.type = "server_vad"  # semantic_vad is served by the same detector
    if "threshold" in value:
        threshold = float(_check_type(value["threshold"], (int, float), f"{param}.threshold"))
        if not 0.0 <= threshold <= 1.0:
            raise ProtocolViolation(
                "threshold must be within [0, 1]", code="invalid_value", param=f"{param}.threshold"
            )
        td.threshold = threshold
    for name in ("prefix_padding_ms", "silence_duration_ms"):
        if name in value:
            ms = _check_type(value[name], int, f"{param}.{name}")
            if not 0 <= ms <= 10_000:
                raise ProtocolViolation(
                    f"{name} must be within [0, 10000]", code="invalid_value", param=f"{param}.{name}"
                )
            setattr(td, name, ms)
    for name in ("create_response", "interrupt_response"):
        if name in value:
            setattr(td, name, _check_type(value[name], bool, f"{param}.{name}"))
    if "idle_timeout_ms" in value:
        idle = value["idle_timeout_ms"]
        td.idle_timeout_ms = None if idle is None else _check_type(idle, int, f"{param}.idle_timeout_ms")
    config.turn_detection = td


def _apply_common(config: SessionConfig, session: dict[str, Any]) -> None:
    if "instructions" in session:
        config.instructions = _check_type(session["instructions"], str, "session.instructions")
    if "temperature" in session:
        config.temperature = float(_check_type(session["temperature"], (int, float), "session.temperature"))
    if "tools" in session:
        config.tools = list(_check_type(session["tools"], list, "session.tools"))
    if "tool_choice" in session:
        config.tool_choice = _tool_choice(session["tool_choice"])
    if "model" in session and isinstance(session["model"], str):
        config.model = session["model"]


TOOL_CHOICE_MODES = ("auto", "none", "required")


def _tool_choice(value: object) -> str | dict[str, str]:
    if isinstance(value, str) and value in TOOL_CHOICE_MODES:
        return value
    if isinstance(value, dict) and value.get("type") == "function":
        name = value.get("name")
        if isinstance(name, str) and name:
            return {"type": "function", "name": name}
    raise ProtocolViolation(
        'session.tool_choice must be "auto", "none", "required" or {"type": "function", "name": ...}, '
        f"not {str(value)[:80]!r}",
        code="invalid_value",
        param="session.tool_choice",
    )


def forced_tool_name(tool_choice: str | dict[str, str]) -> str | None:
    """The function a session's tool_choice names, if it names one."""
    return tool_choice.get("name") if isinstance(tool_choice, dict) else None


def _max_tokens(value: object, param: str) -> int | None:
    if value == "inf" or value is None:
        return None
    tokens = _check_type(value, int, param)
    if tokens < 1:
        raise ProtocolViolation(f"{param} must be >= 1 or 'inf'", code="invalid_value", param=param)
    return int(tokens)


def _modalities(value: object, param: str) -> list[str]:
    items = _check_type(value, list, param)
    if not items or any(m not in ("audio", "text") for m in items):
        raise ProtocolViolation(f"{param} must list 'audio' and/or 'text'", code="invalid_value", param=param)
    return ["audio"] if "audio" in items else ["text"]


def apply_session_update(config: SessionConfig, session: dict[str, Any]) -> None:
    """Apply the fields present in a `session.update` (either shape) to `config`.

    Validates everything before changing anything, so a rejected update leaves no trace.
    """
    scratch = SessionConfig(**{f: getattr(config, f) for f in config.__dataclass_fields__})
    if scratch.turn_detection is not None:
        scratch.turn_detection = TurnDetectionConfig(**vars_of(scratch.turn_detection))
    _apply_common(scratch, session)
    if session.get("type") in ("realtime", None) and not is_beta_session_shape(session):
        _apply_ga(scratch, session)
    elif session.get("type") not in (None, "realtime"):
        raise ProtocolViolation(
            f"session.type {session.get('type')!r} is not supported; use 'realtime'",
            code="invalid_value",
            param="session.type",
        )
    else:
        _apply_beta(scratch, session)
    for name in config.__dataclass_fields__:
        setattr(config, name, getattr(scratch, name))


def vars_of(td: TurnDetectionConfig) -> dict[str, Any]:
    return {f: getattr(td, f) for f in td.__dataclass_fields__}


def _apply_beta(config: SessionConfig, session: dict[str, Any]) -> None:
    if "voice" in session:
        config.voice = _check_type(session["voice"], str, "session.voice")
    if "input_audio_format" in session:
        config.input_format = _beta_format(session["input_audio_format"], "session.input_audio_format")
    if "output_audio_format" in session:
        config.output_format = _beta_format(session["output_audio_format"], "session.output_audio_format")
    if "turn_detection" in session:
        _apply_turn_detection(config, session["turn_detection"], "session.turn_detection")
    if "input_audio_transcription" in session:
        tr = session["input_audio_transcription"]
        config.transcription_model = (
            None
            if tr is None
            else str(_check_type(tr, dict, "session.input_audio_transcription").get("model", "voxgate-asr"))
        )
    if "modalities" in session:
        config.output_modalities = _modalities(session["modalities"], "session.modalities")
    if "max_response_output_tokens" in session:
        config.max_output_tokens = _max_tokens(
            session["max_response_output_tokens"], "session.max_response_output_tokens"
        )


def _apply_ga(config: SessionConfig, session: dict[str, Any]) -> None:
    if "output_modalities" in session:
        config.output_modalities = _modalities(session["output_modalities"], "session.output_modalities")
    if "max_output_tokens" in session:
        config.max_output_tokens = _max_tokens(session["max_output_tokens"], "session.max_output_tokens")
    audio = session.get("audio")
    if audio is None:
        return
    _check_type(audio, dict, "session.audio")
    audio_in = audio.get("input") or {}
    audio_out = audio.get("output") or {}
    _check_type(audio_in, dict, "session.audio.input")
    _check_type(audio_out, dict, "session.audio.output")
    if "format" in audio_in:
        config.input_format = _ga_format(audio_in["format"], "session.audio.input.format")
    if "turn_detection" in audio_in:
        _apply_turn_detection(config, audio_in["turn_detection"], "session.audio.input.turn_detection")
    if "transcription" in audio_in:
        tr = audio_in["transcription"]
        config.transcription_model = (
            None
            if tr is None
            else str(_check_type(tr, dict, "session.audio.input.transcription").get("model", "voxgate-asr"))
        )
    if "format" in audio_out:
        config.output_format = _ga_format(audio_out["format"], "session.audio.output.format")
    if "voice" in audio_out:
        config.voice = _check_type(audio_out["voice"], str, "session.audio.output.voice")


# --- server events -----------------------------------------------------------------------


def _beta_format_name(fmt: AudioFormat) -> str:
    return {Encoding.PCM16: "pcm16", Encoding.ULAW: "g711_ulaw", Encoding.ALAW: "g711_alaw"}[fmt.encoding]


def _ga_format_obj(fmt: AudioFormat) -> dict[str, Any]:
    if fmt.encoding is Encoding.PCM16:
        return {"type": "audio/pcm", "rate": fmt.sample_rate_hz}
    return {"type": "audio/pcmu" if fmt.encoding is Encoding.ULAW else "audio/pcma"}


def _turn_detection_obj(td: TurnDetectionConfig | None) -> dict[str, Any] | None:
    return None if td is None else vars_of(td)


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

    def session(self, config: SessionConfig) -> dict[str, Any]:
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
                "input_audio_transcription": (
                    None if config.transcription_model is None else {"model": config.transcription_model}
                ),
                "turn_detection": _turn_detection_obj(config.turn_detection),
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
                    "transcription": (
                        None if config.transcription_model is None else {"model": config.transcription_model}
                    ),
                    "turn_detection": _turn_detection_obj(config.turn_detection),
                    "noise_reduction": None,
                },
                "output": {
                    "format": _ga_format_obj(config.output_format),
                    "voice": config.voice,
                    "speed": 1.0,
                },
            },
            "tools": config.tools,
            "tool_choice": config.tool_choice,
            "max_output_tokens": config.max_output_tokens or "inf",
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

    def user_text_item(self, item_id: str, text: str) -> dict[str, Any]:
        return {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        }

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
        }
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
    ) -> list[dict[str, Any]]:
        item = self.assistant_item(item_id, "in_progress", None)
        return [
            self.event(
                "response.created", response=self.response(response_id, "in_progress", [], config=config)
            ),
            self.event("response.output_item.added", response_id=response_id, output_index=0, item=item),
            *self.item_added(item, previous_item_id),
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
    ) -> list[dict[str, Any]]:
        """`extra_output`: the response's function_call items, listed after its message."""
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
                    response_id, status, [item, *extra_output], reason=reason, config=config, error=error
                ),
            ),
        ]
