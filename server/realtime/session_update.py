"""A client's `session.update` (OpenAI Realtime, beta or GA shape) applied to session settings.

`apply_session_update(config, session)` validates every field it finds, and changes `config`
only if all of them are valid; a bad one raises `ProtocolViolation` naming the field
(`param`) and the `error.code` to report. `apply_transcription_session_update` does the same
for the beta `transcription_session.update`. No asyncio, no sockets here.

Transcription sessions (GA `session.type: "transcription"`, beta `transcription_session.update`)
caption the caller and never reply: their turn detection's `create_response` and
`interrupt_response` are off, and fields that only a reply reads are refused.
"""

from __future__ import annotations

import re
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


SESSION_TYPES = ("realtime", "transcription")


def _scratch(config: SessionConfig) -> SessionConfig:
    scratch = SessionConfig(**{f: getattr(config, f) for f in config.__dataclass_fields__})
    if scratch.turn_detection is not None:
        scratch.turn_detection = replace(scratch.turn_detection)
    return scratch


def _commit(config: SessionConfig, scratch: SessionConfig) -> None:
    for name in config.__dataclass_fields__:
        setattr(config, name, getattr(scratch, name))


def apply_session_update(config: SessionConfig, session: dict[str, Any]) -> None:
    """Apply the fields present in a `session.update` (either shape) to `config`.

    Validates everything before changing anything, so a rejected update leaves no trace.
    A GA update without `type` keeps the session's type.
    """
    kind = session.get("type")
    if kind in ("realtime", None) and not (kind is None and config.session_type == "transcription"):
        check_fields(session, beta=is_beta_session_shape(session))
    scratch = _scratch(config)
    if kind is not None and kind not in SESSION_TYPES:
        raise ProtocolViolation(
            f"session.type {str(kind)[:40]!r} is not supported; use 'realtime' or 'transcription'",
            code="invalid_value",
            param="session.type",
        )
    if is_beta_session_shape(session):
        _apply_common(scratch, session)
        _apply_beta(scratch, session)
        td_given = session.get("turn_detection")
    else:
        scratch.session_type = str(kind or config.session_type)
        if scratch.session_type == "transcription":
            _refuse_fields(session, _REPLY_FIELDS, "session", "a transcription session")
            audio = session.get("audio")
            if isinstance(audio, dict) and "output" in audio:
                _refuse_fields(audio, ("output",), "session.audio", "a transcription session")
        _apply_common(scratch, session)
        _apply_ga(scratch, session)
        audio = session.get("audio")
        audio_in = audio.get("input") if isinstance(audio, dict) else None
        td_given = audio_in.get("turn_detection") if isinstance(audio_in, dict) else None
    _settle_session_type(config, scratch, td_given, _turn_detection_param(session))
    _commit(config, scratch)


# what only a reply reads: refused in a transcription session (GA names; beta below)
_REPLY_FIELDS = (
    "instructions",
    "tools",
    "tool_choice",
    "output_modalities",
    "max_output_tokens",
    "temperature",
    "voice",
    "prompt",
    "tracing",
    "truncation",
)
_BETA_TRANSCRIPTION_FIELDS = frozenset(
    {
        "input_audio_format",
        "input_audio_transcription",
        "turn_detection",
        "input_audio_noise_reduction",
        "include",
        "modalities",
        "client_secret",
    }
)


def apply_transcription_session_update(config: SessionConfig, session: dict[str, Any]) -> None:
    """Apply a beta `transcription_session.update`'s session to `config`, which becomes a
    transcription session; all-or-nothing, like `apply_session_update`."""
    unknown = sorted(set(session) - _BETA_TRANSCRIPTION_FIELDS)
    if unknown:
        raise ProtocolViolation(
            f"session.{unknown[0][:40]} is not a field of a transcription session; it takes"
            f" {', '.join(sorted(_BETA_TRANSCRIPTION_FIELDS - {'client_secret'}))}",
            code="unknown_parameter",
            param=f"session.{unknown[0][:40]}",
        )
    if "include" in session:
        _check_type(session["include"], (list, type(None)), "session.include")
    scratch = _scratch(config)
    scratch.session_type = "transcription"
    _apply_beta(scratch, {k: v for k, v in session.items() if k != "modalities"})
    _settle_session_type(config, scratch, session.get("turn_detection"), "session.turn_detection")
    _commit(config, scratch)


def _refuse_fields(fields: dict[str, Any], names: tuple[str, ...], where: str, what: str) -> None:
    for name in names:
        if name in fields:
            raise ProtocolViolation(
                f"{where}.{name} is not part of {what}, which transcribes and never replies",
                code="unknown_parameter",
                param=f"{where}.{name}",
            )


def _turn_detection_param(session: dict[str, Any]) -> str:
    return (
        "session.turn_detection" if is_beta_session_shape(session) else "session.audio.input.turn_detection"
    )


def _settle_session_type(old: SessionConfig, new: SessionConfig, td_given: object, param: str) -> None:
    """A transcription session never replies: its turn detection creates no response and
    interrupts none (asking for either is refused); a session that stops being one gets both
    back unless this update sets them. A transcription session always transcribes."""
    given = td_given if isinstance(td_given, dict) else {}
    td = new.turn_detection
    if new.session_type == "transcription":
        for name in ("create_response", "interrupt_response"):
            if given.get(name) is True:
                raise ProtocolViolation(
                    f"{param}.{name} cannot be true in a transcription session: it never replies",
                    code="invalid_value",
                    param=f"{param}.{name}",
                )
        if td is not None:
            td.create_response = td.interrupt_response = False
        if new.transcription_model is None:
            new.transcription_model = "voxgate-asr"
    elif old.session_type == "transcription" and td is not None:
        for name in ("create_response", "interrupt_response"):
            if name not in given:
                setattr(td, name, True)


# Names a client may give its transcription model; all mean the profile's recogniser (Whisper
# or pocketsphinx, or the remote one), whose name the server's settings choose.
TRANSCRIPTION_MODELS = frozenset(
    {
        "voxgate-asr",
        "whisper-1",
        "gpt-4o-transcribe",
        "gpt-4o-transcribe-latest",
        "gpt-4o-mini-transcribe",
        "gpt-4o-mini-transcribe-2025-12-15",
        "gpt-transcribe",
        "gpt-live-transcribe",
        "gpt-realtime-whisper",
    }
)
_LANGUAGE_CODE = re.compile(r"[a-z]{2,3}")


def _apply_transcription(config: SessionConfig, value: object, param: str) -> None:
    """The `transcription` object (GA `audio.input.transcription`, beta
    `input_audio_transcription`): replaced as a whole; null turns transcripts off."""
    if value is None:
        config.transcription_model = None
        config.transcription_language = None
        config.transcription_prompt = ""
        return
    tr = _check_type(value, dict, param)
    model = tr.get("model")
    if model is None:
        model = config.transcription_model or "voxgate-asr"
    if model == "gpt-4o-transcribe-diarize":
        raise ProtocolViolation(
            f"{param}.model {model!r} is not served: this server does not label speakers;"
            " open one transcription session per speaker instead",
            code="invalid_value",
            param=f"{param}.model",
        )
    if model not in TRANSCRIPTION_MODELS:
        raise ProtocolViolation(
            f"{param}.model {str(model)[:60]!r} is not known; use one of"
            f" {', '.join(sorted(TRANSCRIPTION_MODELS))} (all mean this server's recogniser)",
            code="invalid_value",
            param=f"{param}.model",
        )
    for name, instead in (("languages", "language"), ("keywords", "prompt")):
        if name in tr:
            raise ProtocolViolation(
                f"{param}.{name} is not supported; use {param}.{instead}",
                code="unknown_parameter",
                param=f"{param}.{name}",
            )
    language = tr.get("language")
    if language is not None and (not isinstance(language, str) or not _LANGUAGE_CODE.fullmatch(language)):
        raise ProtocolViolation(
            f"{param}.language must be an ISO-639-1 code such as 'en' or 'es', not {str(language)[:20]!r}",
            code="invalid_value",
            param=f"{param}.language",
        )
    prompt = tr.get("prompt")
    if prompt is not None:
        _check_type(prompt, str, f"{param}.prompt")
    config.transcription_model = str(model)
    config.transcription_language = language
    config.transcription_prompt = prompt or ""


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
        _apply_transcription(
            config, session["input_audio_transcription"], "session.input_audio_transcription"
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
        _apply_transcription(config, audio_in["transcription"], "session.audio.input.transcription")
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
