"""Settings from VOXGATE_* environment variables, validated at startup.

Components never see `Settings`; `app.py` turns it into small option objects.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOXGATE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # models: a profile names a set of backends (server/model/profiles.py); asr/llm/tts, when
    # set, replace the default profile's choice (registry names)
    profile: Literal["fast", "quality"] = "fast"
    preload_profiles: list[str] = Field(default_factory=list)
    asr: str | None = None
    llm: str | None = None
    tts: str | None = None
    vad: Literal["webrtc", "silero"] = "silero"
    model_name: str = "voxgate"
    # per-backend options by backend name, as JSON: {"openai": {"base_url": "...", "model": "..."}}
    backend_options: dict[str, dict[str, Any]] = Field(default_factory=dict)

    # session defaults (a client may change them with session.update)
    instructions: str = ""
    voice: str = "en-us"
    vad_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    prefix_padding_ms: int = Field(default=300, ge=0, le=5000)
    silence_duration_ms: int = Field(default=250, ge=0, le=10_000)

    # turn-taking details that the protocol does not expose
    min_speech_ms: int = Field(default=120, ge=0, le=5000)
    barge_in_min_ms: int = Field(default=250, ge=0, le=5000)
    # start the reply this long into the end-of-turn silence, unheard until the turn ends;
    # negative disables speculation
    speculative_silence_ms: int = Field(default=0, le=10_000)

    # outbound pacing
    playout_chunk_ms: int = Field(default=20, ge=10, le=100)
    playout_lead_ms: int = Field(default=150, ge=0, le=200)

    # limits
    max_audio_ahead_ms: int = Field(default=10_000, ge=1000)
    max_message_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)

    # Twilio Media Streams (/v1/twilio; docs/twilio.md)
    # the account's auth token: when set, a websocket upgrade without a valid X-Twilio-Signature
    # is refused (HTTP 403)
    twilio_auth_token: SecretStr | None = None
    # the URL Twilio connects to, exactly as in the TwiML <Stream url>, for servers behind a proxy
    # that changes the scheme, host or path (default: wss://<Host header><request path>)
    twilio_stream_url: str | None = None
    # key presses: "message" turns them into a user message "[DTMF 12#]" and a reply (keys end
    # at "#" or after twilio_dtmf_pause_ms without a key); "ignore" drops them
    twilio_dtmf: Literal["message", "ignore"] = "message"
    twilio_dtmf_pause_ms: int = Field(default=1000, ge=0, le=10_000)
