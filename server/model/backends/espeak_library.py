"""The one libespeak-ng of this process, shared by the espeak TTS and Kokoro's phonemizer.

libespeak-ng keeps global state (the selected voice, the synthesis callback), so every call
into it, from any backend, holds `LOCK`, and it is initialised once. `selected_voice` records
the voice the library has selected, so a backend re-selects only when another changed it.
"""

from __future__ import annotations

import ctypes
import threading

LOCK = threading.RLock()
selected_voice: str | None = None
_sample_rate_hz: int | None = None


def initialize(lib: ctypes.CDLL, output_mode: int, buffer_ms: int, data_path: str, options: int) -> int:
    """espeak_Initialize, once per process (call with LOCK held); returns the sample rate, or
    the library's error (<= 0) if it failed to start."""
    global _sample_rate_hz
    if _sample_rate_hz is None:
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        rate = int(lib.espeak_Initialize(output_mode, buffer_ms, data_path.encode(), options))
        if rate <= 0:
            return rate
        _sample_rate_hz = rate
    return _sample_rate_hz


def select_voice(lib: ctypes.CDLL, voice: str) -> bool:
    """Select `voice` unless it is already selected (call with LOCK held)."""
    global selected_voice
    if voice == selected_voice:
        return True
    if lib.espeak_SetVoiceByName(voice.encode("utf-8")) != 0:
        selected_voice = None  # whatever espeak kept, re-select next time
        return False
    selected_voice = voice
    return True
