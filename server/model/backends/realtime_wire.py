"""The OpenAI Realtime protocol as the upstream backend speaks it: we are the client.

`parse_upstream_event` turns one JSON text frame from the upstream into a typed event (or None
for the events the backend does not use); the `*_event` builders make the client events it
sends, in the GA dialect (OpenAI's GA API, Azure's, and Voxgate accept it). Both dialects'
names are read: a beta-speaking upstream answers in beta names.

Invariants:
- A frame that is not JSON, or a used event without the fields that matter, raises
  `BackendError` (the upstream broke the protocol); unknown event types are None.
- Audio is PCM16 mono little-endian at AUDIO_RATE_HZ both ways, as the GA `audio/pcm` format.

No asyncio, no sockets here.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from server.errors import BackendError
from server.model.base import ImageInput, ToolCallRequest
from server.model.tool_calls import ForcedTool, ToolChoice, ToolSpec

AUDIO_RATE_HZ = 24_000
_AUDIO_FORMAT = {"type": "audio/pcm", "rate": AUDIO_RATE_HZ}

# --- events from the upstream (past tense: what it did) ----------------------------------


@dataclass(frozen=True, slots=True)
class InputCommitted:
    item_id: str


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    audio_start_ms: int
    item_id: str


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    audio_end_ms: int
    item_id: str


@dataclass(frozen=True, slots=True)
class InputTranscribed:
    """The final transcript of a user audio item; `failed` when the upstream could not."""

    item_id: str
    text: str
    failed: bool = False


@dataclass(frozen=True, slots=True)
class ResponseCreated:
    response_id: str


@dataclass(frozen=True, slots=True)
class MessageAdded:
    """The response's assistant message item (the one to truncate)."""

    response_id: str
    item_id: str


@dataclass(frozen=True, slots=True)
class AudioDelta:
    response_id: str
    item_id: str
    pcm: bytes


@dataclass(frozen=True, slots=True)
class TextDelta:
    """Transcript of the reply audio (or the text of a text-only reply)."""

    response_id: str
    item_id: str
    text: str


@dataclass(frozen=True, slots=True)
class FunctionCalled:
    response_id: str
    call_id: str
    name: str
    arguments_json: str


@dataclass(frozen=True, slots=True)
class ResponseDone:
    """status: completed | cancelled | failed | incomplete; `error`: the failure's message."""

    response_id: str
    status: str
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ErrorReported:
    code: str
    message: str
    event_id: str | None


UpstreamEvent = (
    InputCommitted
    | SpeechStarted
    | SpeechStopped
    | InputTranscribed
    | ResponseCreated
    | MessageAdded
    | AudioDelta
    | TextDelta
    | FunctionCalled
    | ResponseDone
    | ErrorReported
)

_AUDIO_DELTAS = frozenset({"response.output_audio.delta", "response.audio.delta"})
_TEXT_DELTAS = frozenset(
    {
        "response.output_audio_transcript.delta",
        "response.audio_transcript.delta",
        "response.output_text.delta",
        "response.text.delta",
    }
)


def parse_upstream_event(text: str | bytes) -> UpstreamEvent | None:
    """One frame from the upstream; None for events the backend does not use."""
    if isinstance(text, bytes):
        raise BackendError("the upstream sent a binary frame; the realtime protocol is JSON text")
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BackendError("the upstream sent a frame that is not JSON") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise BackendError("the upstream sent an event without a type")
    kind: str = raw["type"]
    try:
        return _parse(kind, raw)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise BackendError(f"the upstream sent a malformed {kind[:80]} event: {exc!r}") from exc


def _parse(kind: str, raw: Mapping[str, Any]) -> UpstreamEvent | None:
    if kind in _AUDIO_DELTAS:
        return AudioDelta(_str(raw, "response_id"), _str(raw, "item_id"), base64.b64decode(raw["delta"]))
    if kind in _TEXT_DELTAS:
        return TextDelta(_str(raw, "response_id"), _str(raw, "item_id"), _str(raw, "delta"))
    match kind:
        case "input_audio_buffer.committed":
            return InputCommitted(_str(raw, "item_id"))
        case "input_audio_buffer.speech_started":
            return SpeechStarted(int(raw.get("audio_start_ms") or 0), str(raw.get("item_id") or ""))
        case "input_audio_buffer.speech_stopped":
            return SpeechStopped(int(raw.get("audio_end_ms") or 0), str(raw.get("item_id") or ""))
        case "conversation.item.input_audio_transcription.completed":
            return InputTranscribed(_str(raw, "item_id"), str(raw.get("transcript") or ""))
        case "conversation.item.input_audio_transcription.failed":
            return InputTranscribed(_str(raw, "item_id"), "", failed=True)
        case "response.created":
            return ResponseCreated(_str(raw["response"], "id"))
        case "response.output_item.added":
            item = raw["item"]
            if item.get("type") == "message":
                return MessageAdded(_str(raw, "response_id"), _str(item, "id"))
            return None
        case "response.output_item.done":
            item = raw["item"]
            if item.get("type") == "function_call":
                return FunctionCalled(
                    _str(raw, "response_id"),
                    _str(item, "call_id"),
                    _str(item, "name"),
                    str(item.get("arguments") or ""),
                )
            return None
        case "response.done":
            response = raw["response"]
            status = _str(response, "status")
            error = None
            if status == "failed":
                details = response.get("status_details") or {}
                failure = details.get("error") if isinstance(details, dict) else None
                error = str(failure.get("message")) if isinstance(failure, dict) else "no reason given"
            return ResponseDone(_str(response, "id"), status, error)
        case "error":
            error = raw["error"]
            return ErrorReported(
                str(error.get("code") or error.get("type") or "error"),
                str(error.get("message") or ""),
                error.get("event_id") if isinstance(error.get("event_id"), str) else None,
            )
    return None


def _str(raw: Mapping[str, Any], name: str) -> str:
    value = raw[name]
    if not isinstance(value, str):
        raise TypeError(f"{name} is not a string")
    return value


# --- events to the upstream (the GA dialect) ---------------------------------------------


def session_update_event(
    *,
    instructions: str,
    voice: str | None,
    transcription_model: str | None,
    tools: Sequence[ToolSpec],
    tool_choice: ToolChoice,
    max_output_tokens: int | None,
    turn_detection: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`turn_detection`: None, the gateway commits each turn; else the upstream's VAD
    (`turn_detection_config`)."""
    output: dict[str, Any] = {"format": _AUDIO_FORMAT}
    if voice:
        output["voice"] = voice
    session: dict[str, Any] = {
        "type": "realtime",
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "format": _AUDIO_FORMAT,
                "turn_detection": turn_detection,
                "transcription": None if transcription_model is None else {"model": transcription_model},
            },
            "output": output,
        },
        "tools": [
            {
                "type": "function",
                "name": t.name,
                "description": t.description,
                "parameters": dict(t.parameters),
            }
            for t in tools
        ],
        "tool_choice": {"type": "function", "name": tool_choice.name}
        if isinstance(tool_choice, ForcedTool)
        else tool_choice,
    }
    if instructions:
        session["instructions"] = instructions
    if max_output_tokens is not None:
        session["max_output_tokens"] = max_output_tokens
    return {"type": "session.update", "session": session}


def turn_detection_config(
    kind: str, *, eagerness: str, threshold: float, prefix_padding_ms: int, silence_duration_ms: int
) -> dict[str, Any]:
    """The upstream's VAD with the client's settings, reporting only: it commits each turn
    and says so (`speech_started/stopped`, `committed`), but neither answers nor cancels by
    itself; the gateway asks for the reply and cancels what the caller talks over."""
    config: dict[str, Any] = {"type": kind, "create_response": False, "interrupt_response": False}
    if kind == "semantic_vad":
        config["eagerness"] = eagerness
    else:
        config["threshold"] = threshold
        config["prefix_padding_ms"] = prefix_padding_ms
        config["silence_duration_ms"] = silence_duration_ms
    return config


def append_event(pcm: bytes) -> dict[str, Any]:
    return {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode("ascii")}


def commit_event(event_id: str) -> dict[str, Any]:
    return {"type": "input_audio_buffer.commit", "event_id": event_id}


def clear_event() -> dict[str, Any]:
    return {"type": "input_audio_buffer.clear"}


def response_create_event(event_id: str, *, with_audio: bool, instructions: str | None) -> dict[str, Any]:
    response: dict[str, Any] = {"output_modalities": ["audio"] if with_audio else ["text"]}
    if instructions is not None:
        response["instructions"] = instructions
    return {"type": "response.create", "event_id": event_id, "response": response}


def response_cancel_event(event_id: str, response_id: str | None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "response.cancel", "event_id": event_id}
    if response_id is not None:
        event["response_id"] = response_id
    return event


def truncate_event(event_id: str, item_id: str, audio_end_ms: int) -> dict[str, Any]:
    return {
        "type": "conversation.item.truncate",
        "event_id": event_id,
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": audio_end_ms,
    }


def message_item_event(
    event_id: str, role: str, text: str, images: Sequence[ImageInput] = ()
) -> dict[str, Any]:
    """A message for the upstream's conversation: a user's typed (or transcribed) words and
    any images they shared, or what the assistant said (replaying the history into a new
    upstream session)."""
    parts: list[dict[str, Any]] = []
    if text or not images:
        parts.append({"type": "output_text" if role == "assistant" else "input_text", "text": text})
    parts += [{"type": "input_image", "image_url": i.data_url, "detail": i.detail} for i in images]
    return {
        "type": "conversation.item.create",
        "event_id": event_id,
        "item": {"type": "message", "role": role, "content": parts},
    }


def function_call_event(event_id: str, call: ToolCallRequest) -> dict[str, Any]:
    """A function call the assistant made earlier, replayed into the upstream's conversation."""
    return {
        "type": "conversation.item.create",
        "event_id": event_id,
        "item": {
            "type": "function_call",
            "call_id": call.call_id,
            "name": call.name,
            "arguments": call.arguments_json,
        },
    }


def function_output_event(event_id: str, call_id: str, output: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.create",
        "event_id": event_id,
        "item": {"type": "function_call_output", "call_id": call_id, "output": output},
    }
