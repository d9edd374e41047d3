"""A client's `session.update` (OpenAI Realtime, beta or GA shape) applied to session settings.

`apply_session_update(config, session)` validates every field it finds, and changes `config`
only if all of them are valid; a bad one raises `ProtocolViolation` naming the field
(`param`) and the `error.code` to report. No asyncio, no sockets here.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from server.audio import ALAW_8K, ULAW_8K, AudioFormat, Encoding
from server.errors import ProtocolViolation
from server.streaming.end_of_turn import EAGERNESS_LEVELS
from server.streaming.session_config import SessionConfig, TurnDetectionConfig

SUPPORTED_PCM_RATES_HZ = (8_000, 16_000, 24_000, 44_100, 48_000)
MIN_SPEED, MAX_SPEED = 0.25, 1.5  # audio.output.speed, as OpenAI bounds it


def is_beta_session_shape(session: dict[str, Any]) -> bool:
    beta_keys = {
        "input_audio_format",
        "output_audio_format",
        "modalities",
        "turn_detection",
        "input_audio_transcription",
        "input_audio_noise_reduction",
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
    td.type = kind
    if "eagerness" in value:
        eagerness = value["eagerness"]
        if kind != "semantic_vad":
            raise ProtocolViolation(
                "eagerness is a setting of semantic_vad", code="invalid_value", param=f"{param}.eagerness"
            )
        if eagerness not in EAGERNESS_LEVELS:
            raise ProtocolViolation(
                f"eagerness must be one of {', '.join(EAGERNESS_LEVELS)}, not {str(eagerness)[:40]!r}",
                code="invalid_value",
                param=f"{param}.eagerness",
            )
        td.eagerness = eagerness
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


def speed(value: object, param: str) -> float:
    """A speaking rate in OpenAI's range, 0.25-1.5."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not MIN_SPEED <= value <= MAX_SPEED:
        raise ProtocolViolation(
            f"{param} must be a number from {MIN_SPEED} to {MAX_SPEED}", code="invalid_value", param=param
        )
    return float(value)


def max_tokens(value: object, param: str) -> int | None:
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


# what a session object may hold, by shape; anything else is refused naming it, never ignored
# (`id`, `object`, `expires_at`, `client_secret`: read-only fields a client may echo back)
_READ_ONLY_FIELDS = frozenset({"id", "object", "expires_at", "client_secret"})
GA_SESSION_FIELDS = _READ_ONLY_FIELDS | {
    "type",
    "model",
    "instructions",
    "output_modalities",
    "audio",
    "tools",
    "tool_choice",
    "max_output_tokens",
    "temperature",
    "tracing",
    "truncation",
    "include",
    "prompt",
}
GA_AUDIO_FIELDS = {
    "input": {"format", "transcription", "turn_detection", "noise_reduction"},
    "output": {"format", "voice", "speed"},
}
BETA_SESSION_FIELDS = _READ_ONLY_FIELDS | {
    "model",
    "modalities",
    "instructions",
    "voice",
    "speed",
    "input_audio_format",
    "output_audio_format",
    "input_audio_transcription",
    "input_audio_noise_reduction",
    "turn_detection",
    "tools",
    "tool_choice",
    "temperature",
    "max_response_output_tokens",
    "tracing",
    "include",
}


def check_fields(session: dict[str, Any], beta: bool) -> None:
    """Refuse fields this server does not know or cannot honour, naming each: an unknown
    field, `prompt` (stored prompts), `include` (extra outputs), a `tracing` configuration
    (there is no tracing backend: null and "auto" are taken and mean nothing here), and a
    `truncation` other than "auto"."""
    known = BETA_SESSION_FIELDS if beta else GA_SESSION_FIELDS
    for name in sorted(session):
        if name not in known:
            raise ProtocolViolation(
                f"unknown session field {name!r}", code="unknown_parameter", param=f"session.{name}"
            )
    if session.get("prompt") is not None:
        raise ProtocolViolation(
            "stored prompts are not supported", code="unsupported_parameter", param="session.prompt"
        )
    if session.get("include"):
        raise ProtocolViolation(
            "include (extra outputs such as logprobs) is not supported",
            code="unsupported_parameter",
            param="session.include",
        )
    if session.get("tracing") not in (None, "auto"):
        raise ProtocolViolation(
            "tracing configurations are not supported (there is no tracing backend); use null or 'auto'",
            code="unsupported_parameter",
            param="session.tracing",
        )
    if session.get("truncation", "auto") != "auto":
        raise ProtocolViolation(
            "only truncation 'auto' is supported", code="unsupported_parameter", param="session.truncation"
        )
    audio = session.get("audio")
    if not beta and isinstance(audio, dict):
        for direction in sorted(audio):
            if direction not in GA_AUDIO_FIELDS:
                raise ProtocolViolation(
                    f"unknown audio field {direction!r}",
                    code="unknown_parameter",
                    param=f"session.audio.{direction}",
                )
            fields = audio[direction]
            for name in sorted(fields) if isinstance(fields, dict) else ():
                if name not in GA_AUDIO_FIELDS[direction]:
                    raise ProtocolViolation(
                        f"unknown audio field {name!r}",
                        code="unknown_parameter",
                        param=f"session.audio.{direction}.{name}",
                    )


def apply_session_update(config: SessionConfig, session: dict[str, Any]) -> None:
    """Apply the fields present in a `session.update` (either shape) to `config`.

    Validates everything before changing anything, so a rejected update leaves no trace.
    """
    if session.get("type") in ("realtime", None):
        check_fields(session, beta=is_beta_session_shape(session))
    scratch = SessionConfig(**{f: getattr(config, f) for f in config.__dataclass_fields__})
    if scratch.turn_detection is not None:
        scratch.turn_detection = replace(scratch.turn_detection)
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


SEMANTIC_VAD_FIELDS = ("type", "eagerness", "create_response", "interrupt_response")


def vars_of(td: TurnDetectionConfig) -> dict[str, Any]:
    """The turn_detection object as OpenAI shows it: semantic_vad with its eagerness and
    switches, server_vad with its VAD settings."""
    if td.type == "semantic_vad":
        return {f: getattr(td, f) for f in SEMANTIC_VAD_FIELDS}
    return {f: getattr(td, f) for f in td.__dataclass_fields__ if f != "eagerness"}


NOISE_REDUCTION_TYPES = ("near_field", "far_field")


def _noise_reduction(value: object, param: str) -> str | None:
    """OpenAI's noise reduction object: {"type": "near_field" | "far_field"}, or null (off)."""
    if value is None:
        return None
    kind = _check_type(value, dict, param).get("type")
    if kind not in NOISE_REDUCTION_TYPES:
        raise ProtocolViolation(
            f"unsupported noise reduction type {kind!r}; expected one of {', '.join(NOISE_REDUCTION_TYPES)}",
            code="invalid_value",
            param=f"{param}.type",
        )
    return str(kind)


def _apply_beta(config: SessionConfig, session: dict[str, Any]) -> None:
    if "voice" in session:
        config.voice = _check_type(session["voice"], str, "session.voice")
    if "speed" in session:  # beta sessions name it at the top
        config.speed = speed(session["speed"], "session.speed")
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
    if "input_audio_noise_reduction" in session:
        config.noise_reduction = _noise_reduction(
            session["input_audio_noise_reduction"], "session.input_audio_noise_reduction"
        )
    if "modalities" in session:
        config.output_modalities = _modalities(session["modalities"], "session.modalities")
    if "max_response_output_tokens" in session:
        config.max_output_tokens = max_tokens(
            session["max_response_output_tokens"], "session.max_response_output_tokens"
        )


def _apply_ga(config: SessionConfig, session: dict[str, Any]) -> None:
    if "output_modalities" in session:
        config.output_modalities = _modalities(session["output_modalities"], "session.output_modalities")
    if "max_output_tokens" in session:
        config.max_output_tokens = max_tokens(session["max_output_tokens"], "session.max_output_tokens")
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
    if "noise_reduction" in audio_in:
        config.noise_reduction = _noise_reduction(
            audio_in["noise_reduction"], "session.audio.input.noise_reduction"
        )
    if "format" in audio_out:
        config.output_format = _ga_format(audio_out["format"], "session.audio.output.format")
    if "voice" in audio_out:
        config.voice = _check_type(audio_out["voice"], str, "session.audio.output.voice")
    if "speed" in audio_out:
        config.speed = speed(audio_out["speed"], "session.audio.output.speed")
