"""A session's settings, whatever protocol the client speaks.

The conversation reads these; edge adapters build new ones from their carrier's messages
(server/realtime/wire.py parses OpenAI's `session.update` in both dialects; a Twilio call
sets mu-law audio and server VAD) and hand them over in an `UpdateSession` command.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from server.audio import AudioFormat, Encoding
from server.model.base import ReplyGrounding
from server.privacy import PrivacyOptions
from server.streaming.end_of_turn import semantic_policy
from server.streaming.lifetime import LifetimeOptions
from server.streaming.playout import PlayoutOptions
from server.streaming.turns import TurnOptions

MAX_GREETING_CHARS = 1000  # about a minute of speech: a greeting, not a script


@dataclass(slots=True)
class TurnDetectionConfig:
    """`server_vad`: a fixed silence ends the turn; `semantic_vad`: a silence that depends on
    the caller's words (end_of_turn.py), by `eagerness`; its threshold and padding are the
    VAD's, its `silence_duration_ms` unused."""

    type: str = "server_vad"
    eagerness: str = "auto"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 300
    create_response: bool = True
    interrupt_response: bool = True
    idle_timeout_ms: int | None = None


@dataclass(slots=True)
class SessionConfig:
    """The canonical session settings. `tools` and `tool_choice` keep the client's own
    declarations, to be echoed back; the conversation reads the validated specs.

    `session_type` "transcription": live captions only, never a reply (turn detection's
    create_response and interrupt_response are off). `transcription_model` is the name the
    client gave (echoed; every accepted name means the profile's recogniser), with its
    `transcription_language` (ISO-639-1, None: the recogniser's default) and `_prompt`."""

    id: str
    model: str
    session_type: str = "realtime"  # "realtime" | "transcription"
    instructions: str = ""
    voice: str = "default"
    speed: float = 1.0  # audio.output.speed: 0.25-1.5, the voice's rate
    input_format: AudioFormat = field(default_factory=lambda: AudioFormat(Encoding.PCM16, 24_000))
    output_format: AudioFormat = field(default_factory=lambda: AudioFormat(Encoding.PCM16, 24_000))
    turn_detection: TurnDetectionConfig | None = field(default_factory=TurnDetectionConfig)
    transcription_model: str | None = "voxgate-asr"
    transcription_language: str | None = None
    transcription_prompt: str = ""
    noise_reduction: str | None = None  # "near_field" | "far_field" | None (server/audio_processing.py)
    output_modalities: list[str] = field(default_factory=lambda: ["audio"])
    temperature: float = 0.8
    max_output_tokens: int | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str | dict[str, str] = "auto"  # "auto" | "none" | "required" | {"type": "function", "name"}

    def copy(self) -> SessionConfig:
        """An independent copy: changing it (or what it holds) leaves this one as it was."""
        return replace(
            self,
            turn_detection=None if self.turn_detection is None else replace(self.turn_detection),
            output_modalities=list(self.output_modalities),
            tools=list(self.tools),
            tool_choice=dict(self.tool_choice) if isinstance(self.tool_choice, dict) else self.tool_choice,
        )


def forced_tool_name(tool_choice: str | dict[str, str]) -> str | None:
    """The function a session's tool_choice names, if it names one."""
    return tool_choice.get("name") if isinstance(tool_choice, dict) else None


@dataclass(frozen=True, slots=True)
class ConversationOptions:
    model_name: str = "voxgate-cascade"
    instructions: str = ""
    voice: str = "en-us"
    turn: TurnOptions = field(default_factory=TurnOptions)
    prefix_padding_ms: int = 300
    playout: PlayoutOptions = field(default_factory=PlayoutOptions)
    max_audio_ahead_ms: int = 10_000
    lifetime: LifetimeOptions = field(default_factory=LifetimeOptions)
    privacy: PrivacyOptions = field(default_factory=PrivacyOptions)
    # the reply's echo in the caller's audio (server settings: no protocol field): frames the
    # echo explains count as silence for turn-taking (echo_gate.py); and/or the audio is
    # cleaned of it (server/audio_processing.py); the sessions' default noise reduction
    echo_gate: bool = False
    echo_cancellation: bool = False
    noise_reduction: str | None = None
    # the operator's knowledge and the checks on the model's replies (server/knowledge)
    grounding: ReplyGrounding | None = None
    # whether the model's own VAD ends the turns, where it has one (DetectsTurns); None: its default
    model_detects_turns: bool | None = None
    # spoken as the session's first reply, as it is, before the caller says anything (a phone
    # line's "Thank you for calling ..."); None: the assistant waits for the caller
    greeting: str | None = None

    def session_config(self, session_id: str) -> SessionConfig:
        """The session settings a session with these options starts from."""
        return SessionConfig(
            id=session_id,
            model=self.model_name,
            instructions=self.instructions,
            voice=self.voice,
            turn_detection=TurnDetectionConfig(
                type="server_vad" if self.turn.semantic is None else "semantic_vad",
                eagerness="auto" if self.turn.semantic is None else self.turn.semantic.eagerness,
                threshold=self.turn.threshold,
                prefix_padding_ms=self.prefix_padding_ms,
                silence_duration_ms=self.turn.silence_duration_ms,
                create_response=self.turn.create_response,
                interrupt_response=self.turn.interrupt_response,
                idle_timeout_ms=self.turn.idle_timeout_ms,
            ),
            noise_reduction=self.noise_reduction,
        )

    def turn_options(self, turn_detection: TurnDetectionConfig) -> TurnOptions:
        """The turn-taking options of a session whose client set `turn_detection`; what a
        client cannot set stays as the server configured it."""
        defaults = self.turn
        return TurnOptions(
            threshold=turn_detection.threshold,
            min_speech_ms=defaults.min_speech_ms,
            barge_in_min_ms=defaults.barge_in_min_ms,
            silence_duration_ms=turn_detection.silence_duration_ms,
            create_response=turn_detection.create_response,
            interrupt_response=turn_detection.interrupt_response,
            idle_timeout_ms=turn_detection.idle_timeout_ms,
            speculative_silence_ms=defaults.speculative_silence_ms,
            vad_hangover_ms=defaults.vad_hangover_ms,
            vad_min_voiced_ms=defaults.vad_min_voiced_ms,
            semantic=semantic_policy(turn_detection.eagerness)
            if turn_detection.type == "semantic_vad"
            else None,
            semantic_hangover_ms=defaults.semantic_hangover_ms,
            interruption=defaults.interruption,
            model_detects_turns=defaults.model_detects_turns,
        )
