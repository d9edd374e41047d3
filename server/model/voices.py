"""Voice names: OpenAI's (which Realtime and speech clients send, and which every Voxgate voice
answers with its default voice) and the question whether a text-to-speech backend knows one."""

from __future__ import annotations

from typing import Final

# OpenAI's voice names: a client written for OpenAI sends them; they speak with the default voice
OPENAI_VOICES: Final = frozenset(
    {
        "alloy",
        "ash",
        "ballad",
        "cedar",
        "coral",
        "echo",
        "fable",
        "marin",
        "nova",
        "onyx",
        "sage",
        "shimmer",
        "verse",
    }
)


def voice_is_known(tts: object, voice: str) -> bool:
    """Whether `tts` can speak `voice`: the empty name (its default), an OpenAI name, or one
    its `has_voice` (optional: backends that can list their voices; blocking, about a
    millisecond) knows. A backend that cannot tell takes any name."""
    if not voice or voice in OPENAI_VOICES:
        return True
    has_voice = getattr(tts, "has_voice", None)
    return not callable(has_voice) or bool(has_voice(voice))
