"""A session's settings, whatever protocol the client speaks.

The conversation reads these; edge adapters build new ones from their carrier's messages
(server/realtime/wire.py parses OpenAI's `session.update` in both dialects; a Twilio call
sets mu-law audio and server VAD) and hand them over in an `UpdateSession` command.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from server.audio import AudioFormat, Encoding


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
    """The canonical session settings. `tools` and `tool_choice` keep the client's own
    declarations, to be echoed back; the conversation reads the validated specs."""

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
