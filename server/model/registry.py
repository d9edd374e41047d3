"""Backend name -> "module:factory", imported only when selected.

A factory is a callable taking the backend's option mapping (may be empty) and returning the
loaded backend. Heavy imports live inside the backend modules, so naming a backend that is not
installed fails here, with `BackendUnavailable`, not at import time of the server.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from server.errors import BackendUnavailable

ASR_BACKENDS: dict[str, str] = {
    "pocketsphinx": "server.model.backends.pocketsphinx_asr:load",
    "whisper": "server.model.backends.whisper_asr:load",
    "openai-asr": "server.model.backends.remote_asr:load",
}
LLM_BACKENDS: dict[str, str] = {
    "rules": "server.model.backends.rule_responder:load",
    "gemma": "server.model.backends.gemma_llm:load",
    "openai": "server.model.backends.openai_llm:load",
}
TTS_BACKENDS: dict[str, str] = {
    "espeak": "server.model.backends.espeak_tts:load",
    "kokoro": "server.model.backends.kokoro_tts:load",
    "openai-tts": "server.model.backends.remote_tts:load",
}
# whole models (OmniModel): factories take (options, ModelDeadlines)
OMNI_BACKENDS: dict[str, str] = {
    "realtime": "server.model.backends.realtime_upstream:load",
}
VAD_BACKENDS: dict[str, str] = {
    "webrtc": "server.vad.webrtc:load",
    "silero": "server.vad.silero:load",
}


def resolve(table: Mapping[str, str], name: str, kind: str) -> Callable[..., Any]:
    try:
        target = table[name]
    except KeyError:
        known = ", ".join(sorted(table))
        raise BackendUnavailable(f"unknown {kind} backend {name!r}; known: {known}") from None
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailable(f"{kind} backend {name!r} cannot be imported: {exc}") from exc
    factory: Callable[..., Any] = getattr(module, attr)
    return factory
