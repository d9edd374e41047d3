"""Settings from VOXGATE_* environment variables, validated at startup.

Components never see `Settings`; `server/http/runtime.py` and `server/http/app.py` turn it into
small option objects.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from server.streaming.session_config import MAX_GREETING_CHARS


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOXGATE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # privacy (docs/privacy.md): log lines are JSON objects (auto: text on a terminal, JSON
    # otherwise) with ids and latencies, never what was said unless log_transcripts;
    # redact_transcripts replaces card numbers, phone numbers and emails in the transcripts
    # of events handed to embedding code and of logs (the model still hears them as said)
    log_format: Literal["auto", "json", "text"] = "auto"
    log_transcripts: bool = False
    redact_transcripts: bool = False

    # access (docs/security.md): with keys set, /v1/realtime, /metrics and minting client
    # secrets need one (Authorization: Bearer <key>); without keys the server is open and
    # `voxgate serve` refuses a non-loopback host unless allow_unauthenticated
    api_keys: list[SecretStr] = Field(default_factory=list)  # JSON list: ["key1", "key2"]
    api_keys_file: Path | None = None  # one key per line; '#' starts a comment
    allow_unauthenticated: bool = False
    # browser origins allowed to open the websocket and (CORS) mint client secrets, e.g.
    # ["https://app.example.com"]; "*" allows any. Empty: pages served by this server on a
    # loopback name (http://127.0.0.1:PORT, http://localhost:PORT). No Origin header: allowed.
    allowed_origins: list[str] = Field(default_factory=list)
    client_secret_ttl_s: int = Field(default=600, ge=10, le=7200)

    # models: a profile names a set of backends (server/model/profiles.py); asr/llm/tts, when
    # set, replace the default profile's choice (registry names); "realtime" serves sessions
    # from an upstream OpenAI-Realtime-compatible websocket, configured by
    # backend_options["realtime"] (server/model/backends/realtime_upstream.py)
    profile: Literal["fast", "quality", "realtime"] = "fast"
    preload_profiles: list[str] = Field(default_factory=list)
    asr: str | None = None
    llm: str | None = None
    tts: str | None = None
    vad: Literal["webrtc", "silero"] = "silero"
    # a batching VAD (Silero) runs in a worker process, off the event loop and its GIL
    vad_process: bool = True
    model_name: str = "voxgate"
    # per-backend options by backend name, as JSON: {"openai": {"base_url": "...", "model": "..."}}
    backend_options: dict[str, dict[str, Any]] = Field(default_factory=dict)

    # session defaults (a client may change them with session.update)
    instructions: str = ""
    voice: str = "en-us"
    # the session's first reply, spoken as it is before the caller says anything (a phone
    # line's "Thank you for calling ..."); empty: the assistant waits for the caller. A Twilio
    # call's `greeting` <Parameter> and the session_setup hook's SessionSetup.greeting override it
    greeting: str = Field(default="", max_length=MAX_GREETING_CHARS)
    vad_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    prefix_padding_ms: int = Field(default=300, ge=0, le=5000)
    silence_duration_ms: int = Field(default=250, ge=0, le=10_000)
    # how a turn ends: "server_vad" after silence_duration_ms of silence; "semantic_vad" after
    # a silence that depends on the caller's words (server/streaming/end_of_turn.py), by eagerness
    turn_detection: Literal["server_vad", "semantic_vad"] = "server_vad"
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"

    # operator knowledge (README "Knowledge"; server/knowledge/): a YAML file of example
    # questions with answers, and facts. Loaded and indexed at start: a malformed file stops
    # `voxgate serve` with its line. A caller's line that matches a question with a score of
    # knowledge_answer_score or more gets the answer as written; from knowledge_hedge_score
    # (none: never) the answer after "If you mean <question>:"; from knowledge_hint_score the
    # model gets the entries. Measured on recognised speech: BENCHMARKS.md
    knowledge: Path | None = None
    knowledge_answer_score: float = Field(default=0.6, ge=-1.0, le=10.0)
    knowledge_hedge_score: float | None = Field(default=0.45, ge=-1.0, le=10.0)
    knowledge_hint_score: float = Field(default=0.4, ge=-1.0, le=10.0)
    # the checks on the replies of the server's own language models (never on an embedding
    # code's brain or a model object it gives): a phrase with a number, price, date, time, phone
    # number, email or URL that neither the knowledge, the instructions nor the conversation
    # holds, or one in the caller's voice, is replaced by an honest fallback before it is spoken
    check_replies: bool = True

    # turn-taking details that the protocol does not expose
    min_speech_ms: int = Field(default=120, ge=0, le=5000)
    barge_in_min_ms: int = Field(default=250, ge=0, le=5000)
    # what speech over a reply does (server/streaming/interruptions.py): "words" pauses the
    # reply and lets the recogniser's words decide (a real interruption cancels it; "uh-huh",
    # "yeah" or a cough resume it where it paused); "voice": any barge_in_min_ms of voice cancels
    barge_in_mode: Literal["voice", "words"] = "words"
    # start the reply this long into the end-of-turn silence, unheard until the turn ends;
    # negative disables speculation
    speculative_silence_ms: int = Field(default=0, le=10_000)
    # start the embedded language model on the recogniser's last hypothesis while it finishes
    # the final transcript (kept only if the two agree; see server/model/cascade.py), beside
    # PocketSphinx only (server/http/app.py). Measured on the 2-core box with one session: p50
    # 572 -> 473 ms, p95 877 -> 742; with the CPU saturated it slowed the recogniser more than
    # it saved, so turn it off on a box run at capacity
    anticipate_replies: bool = True

    # the reply's echo in the caller's audio (speakerphones, phone lines, clients without
    # their own echo cancellation): echo_gate counts frames that the echo explains as silence
    # for turn-taking, leaving the audio whole (server/streaming/echo_gate.py); echo_cancellation
    # runs WebRTC's canceller on the audio itself (server/audio_processing.py), which also
    # silences a caller who talks over the reply (measured: BENCHMARKS.md), so it is off.
    # noise_reduction is the sessions' default for OpenAI's input_audio_noise_reduction
    # ("none": off, as OpenAI's default)
    echo_gate: bool = True
    echo_cancellation: bool = False
    noise_reduction: Literal["none", "near_field", "far_field"] = "none"

    # outbound pacing
    playout_chunk_ms: int = Field(default=20, ge=10, le=100)
    playout_lead_ms: int = Field(default=150, ge=0, le=200)

    # deadlines on model calls: a backend silent for longer fails the response (error code
    # model_timeout) and the session goes on; see server/model/deadlines.py
    asr_final_timeout_s: float = Field(default=15.0, gt=0, le=600)  # a new decoder may have to start
    llm_first_token_timeout_s: float = Field(default=10.0, gt=0, le=600)
    llm_token_gap_timeout_s: float = Field(default=5.0, gt=0, le=600)
    tts_phrase_timeout_s: float = Field(default=10.0, gt=0, le=600)
    # on shutdown (SIGTERM): refuse new sessions, let replies in progress finish for up to this
    # long, then close every session with 1001
    shutdown_grace_s: float = Field(default=10.0, ge=0, le=600)

    # limits
    max_audio_ahead_ms: int = Field(default=10_000, ge=1000)
    max_message_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    # admission and session limits (docs/operations.md). Concurrent sessions over /v1/realtime
    # and /v1/twilio together; beyond it an upgrade gets HTTP 503 with Retry-After. The default
    # is what the measured fast profile holds on a 2-core box without dropping sessions.
    max_sessions: int = Field(default=4, ge=1, le=100_000)
    # new websocket connections per minute (sustained) and burst, per client IP and per API
    # key; over it an upgrade gets HTTP 429 with Retry-After. 0 per minute disables the limit
    ip_connections_per_minute: float = Field(default=60.0, ge=0, le=1_000_000)
    ip_connection_burst: int = Field(default=20, ge=1, le=1_000_000)
    key_connections_per_minute: float = Field(default=120.0, ge=0, le=1_000_000)
    key_connection_burst: int = Field(default=40, ge=1, le=1_000_000)
    # a session ends (close 1000) after session_max_duration_s, with a `session.expiring` event
    # session_warning_s before (0: no warning), or after idle_timeout_s without any client
    # message (0 disables)
    session_max_duration_s: float = Field(default=3600.0, gt=0, le=7 * 24 * 3600)
    session_warning_s: float = Field(default=60.0, ge=0)
    idle_timeout_s: float = Field(default=300.0, ge=0, le=7 * 24 * 3600)
    # a client that stops reading: a send blocked this long (about as many ms of audio held
    # back) ends the session with close 1008
    max_outbound_buffer_ms: int = Field(default=2000, ge=100, le=600_000)

    # processes (docs/operations.md): `workers` processes share the listening port, each with
    # its own event loop and its own copy of the models (server/http/workers.py); every limit
    # above holds per worker (with Redis, the connection rates and replica_max_sessions hold
    # across them)
    workers: int = Field(default=1, ge=1, le=1024)

    # Shared state across replicas (docs/operations.md, "Replicas"). With a Redis URL
    # (redis://host:6379/0, rediss:// for TLS), connection-rate limits, client secrets and
    # Twilio call parameters are shared by every process that uses the same Redis and
    # `redis_prefix`, and sessions are counted per replica and globally; without one each
    # process keeps them in memory. max_sessions above stays a per-process cap either way
    redis_url: SecretStr | None = None
    redis_prefix: str = Field(default="voxgate", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    # this replica's name (a machine or pod; its worker processes share it): the key of its
    # session count in Redis and the `replica` label of its metrics
    replica_id: str = Field(
        default_factory=socket.gethostname, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$"
    )
    # sessions on this replica (all its processes) and on all replicas together; 0: no cap.
    # Need redis_url
    replica_max_sessions: int = Field(default=0, ge=0, le=1_000_000)
    global_max_sessions: int = Field(default=0, ge=0, le=10_000_000)
    # a session's place in those counts expires this long after its replica last renewed it
    # (every third of it), so the sessions of a replica that died stop counting
    redis_slot_ttl_s: float = Field(default=30.0, ge=3, le=3600)
    # a Redis command that takes longer than this fails (the limit's fallback applies)
    redis_timeout_s: float = Field(default=0.5, gt=0, le=30)
    # Redis unreachable: "open" admits on the per-process limits alone (the replica and global
    # caps are not checked), "closed" refuses new sessions (HTTP 503). Rate limits always fall
    # back to per-process buckets; client secrets cannot be checked, so they are refused (503)
    redis_session_caps_on_failure: Literal["open", "closed"] = "open"

    # Behind a reverse proxy: the addresses (comma-separated, CIDR ranges allowed, "*" for any)
    # whose X-Forwarded-For / X-Forwarded-Proto are trusted, so the per-address limits see the
    # caller, not the proxy. Unset: uvicorn's FORWARDED_ALLOW_IPS, else 127.0.0.1 and ::1. Only
    # list proxies: anything connecting from a trusted address can claim any client address
    forwarded_allow_ips: str | None = None

    # Speech API (README, "Deployments"): OpenAI-compatible POST /v1/audio/transcriptions and
    # /v1/audio/speech, answered by the embedded recogniser and voice of the default profile
    # (or of the profile a request's `model` names), behind the API key like /metrics. Other
    # Voxgates then use this one's models through the openai-asr / openai-tts backends. On by
    # default: the models are loaded anyway and nothing runs until a request comes. Requests
    # in progress at once are capped (beyond: HTTP 503 with Retry-After), as are uploads
    speech_api: bool = True
    speech_api_max_requests: int = Field(default=4, ge=1, le=10_000)
    speech_api_max_upload_bytes: int = Field(default=25 * 1024 * 1024, ge=1024, le=2**31)

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

    @model_validator(mode="after")
    def _check_session_limits(self) -> Settings:
        if self.session_warning_s >= self.session_max_duration_s:
            raise ValueError(
                f"session_warning_s ({self.session_warning_s}) must be less than "
                f"session_max_duration_s ({self.session_max_duration_s})"
            )
        return self

    @model_validator(mode="after")
    def _check_shared_caps(self) -> Settings:
        if self.redis_url is None:
            for name in ("replica_max_sessions", "global_max_sessions"):
                if getattr(self, name):
                    raise ValueError(f"{name} counts sessions in Redis: set redis_url too")
        return self
