"""`response.create` bodies: the per-response overrides, and out-of-band responses.

    {"type": "response.create", "response": {
        "conversation": "auto" | "none",       # none: out of band, joins no conversation
        "input": [items],                      # its own context instead of the conversation
        "instructions": "...", "output_modalities": ["text"], "max_output_tokens": 200 | "inf",
        "audio": {"output": {"voice": "..."}}, "metadata": {"topic": "summary"}}}

`input` items are messages: `user` (input_text, input_image), `system` (input_text) and
`assistant` (output_text / text). An `item_reference` to a conversation item, function-call
items and per-response `tools` are refused with an `error` naming the field (the server does
not keep items by id for reference; per-response tools are not offered). Metadata follows
OpenAI's limits: at most 16 pairs of strings, keys up to 64 characters, values up to 512.
"""

from __future__ import annotations

from typing import Any

from server.errors import ProtocolViolation
from server.model.base import ImageInput, Message, ResponseOptions
from server.realtime.images import MAX_IMAGES_PER_ITEM, parse_input_image
from server.realtime.session_update import max_tokens
from server.streaming.commands import CreateResponse
from server.streaming.session_config import SessionConfig

MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
MAX_INPUT_ITEMS = 256
_TEXT_PARTS = {
    "user": ("input_text",),
    "system": ("input_text", "text"),
    "assistant": ("output_text", "text"),
}
_REFUSED_FIELDS = ("tools", "tool_choice", "prompt")


def parse_response_create(
    body: dict[str, Any], config: SessionConfig, event_id: str | None
) -> CreateResponse:
    """The command for one `response.create` body (validated); ProtocolViolation names the field."""
    for name in _REFUSED_FIELDS:
        if body.get(name) is not None:
            raise ProtocolViolation(
                f"response.{name} is not supported: set tools for the session with session.update",
                code="unsupported_parameter",
                param=f"response.{name}",
            )
    conversation = body.get("conversation", "auto")
    if conversation not in ("auto", "none"):
        raise ProtocolViolation(
            "response.conversation must be 'auto' or 'none'",
            code="invalid_value",
            param="response.conversation",
        )
    context = None if body.get("input") is None else parse_input(body["input"])
    if context is not None and conversation != "none":
        raise ProtocolViolation(
            "response.input needs conversation 'none' here (a response with its own input joins no conversation)",
            code="invalid_value",
            param="response.input",
        )
    return CreateResponse(
        response_options(body, config),
        event_id,
        metadata=parse_metadata(body.get("metadata")),
        out_of_band=conversation == "none",
        context=context,
    )


def response_options(body: dict[str, Any], config: SessionConfig) -> ResponseOptions:
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
    limit = body.get("max_output_tokens", body.get("max_response_output_tokens"))
    tokens = None if limit is None else max_tokens(limit, "response.max_output_tokens")
    return ResponseOptions(
        with_audio="audio" in modalities, instructions=instructions, voice=voice, max_output_tokens=tokens
    )


def parse_metadata(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ProtocolViolation(
            "response.metadata must be an object of strings", code="invalid_value", param="response.metadata"
        )
    if len(value) > MAX_METADATA_PAIRS or any(
        len(k) > MAX_METADATA_KEY_CHARS or len(v) > MAX_METADATA_VALUE_CHARS for k, v in value.items()
    ):
        raise ProtocolViolation(
            f"response.metadata holds at most {MAX_METADATA_PAIRS} pairs, keys up to "
            f"{MAX_METADATA_KEY_CHARS} characters and values up to {MAX_METADATA_VALUE_CHARS}",
            code="invalid_value",
            param="response.metadata",
        )
    return dict(value)


def parse_input(value: object) -> tuple[Message, ...]:
    """The messages of a response's own `input` (an empty list: no context at all)."""
    if not isinstance(value, list) or len(value) > MAX_INPUT_ITEMS:
        raise ProtocolViolation(
            f"response.input must be a list of at most {MAX_INPUT_ITEMS} items",
            code="invalid_value",
            param="response.input",
        )
    return tuple(_input_message(item, f"response.input[{index}]") for index, item in enumerate(value))


def _input_message(item: object, param: str) -> Message:
    if not isinstance(item, dict):
        raise ProtocolViolation(f"{param} must be an object", code="invalid_value", param=param)
    kind = item.get("type", "message")
    if kind == "item_reference":
        raise ProtocolViolation(
            "item_reference is not supported: send the items' content",
            code="unsupported_parameter",
            param=param,
        )
    role = item.get("role")
    if kind != "message" or role not in _TEXT_PARTS:
        raise ProtocolViolation(
            f"{param} must be a user, system or assistant message",
            code="unsupported_item_type",
            param=f"{param}.type",
        )
    content = item.get("content")
    if not isinstance(content, list):
        raise ProtocolViolation(
            f"{param}.content must be a list", code="invalid_value", param=f"{param}.content"
        )
    texts: list[str] = []
    images: list[ImageInput] = []
    for index, part in enumerate(content):
        where = f"{param}.content[{index}]"
        if not isinstance(part, dict):
            raise ProtocolViolation(f"{where} must be an object", code="invalid_value", param=where)
        if part.get("type") in _TEXT_PARTS[role] and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif part.get("type") == "input_image" and role == "user":
            images.append(parse_input_image(part.get("image_url"), part.get("detail"), where))
        else:
            raise ProtocolViolation(
                f"{where}: a {role} message takes {' or '.join(_TEXT_PARTS[role])}"
                + (" or input_image" if role == "user" else "")
                + " parts with text",
                code="invalid_value",
                param=where,
            )
    if len(images) > MAX_IMAGES_PER_ITEM:
        raise ProtocolViolation(
            f"at most {MAX_IMAGES_PER_ITEM} images in one item", code="invalid_value", param=param
        )
    return Message(role, " ".join(texts), images=tuple(images))
