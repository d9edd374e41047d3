"""Profiles: named sets of backends, and the catalog that loads each backend once.

- fast (default): pocketsphinx -> language model -> espeak-ng; the shortest path to first audio.
- quality: Whisper -> language model -> Kokoro; more accurate and more natural, slower.
- realtime: a whole model behind an upstream OpenAI-Realtime-compatible websocket
  (server/model/backends/realtime_upstream.py); Voxgate keeps the edge (auth, admission,
  turn-taking, paced playout, exact truncation).

A profile is either a `Profile` (a cascade: ASR + LLM + TTS, assembled into a CascadeModel) or
an `OmniProfile` (one omni backend that is an OmniModel by itself, from OMNI_BACKENDS).

A session picks a profile by the model name it connects with (`?model=voxgate-quality`, or just
`quality`); any other model name gets the server's default profile. Backends are loaded on first
use, once, and shared by every profile and session that names them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from server.errors import BackendUnavailable
from server.model.base import AsrBackend, LlmBackend, OmniModel, TtsBackend
from server.model.cascade import CascadeModel
from server.model.deadlines import ModelDeadlines
from server.model.registry import ASR_BACKENDS, LLM_BACKENDS, OMNI_BACKENDS, TTS_BACKENDS, resolve


@dataclass(frozen=True, slots=True)
class Profile:
    """A cascade: speech-to-text, language model and text-to-speech, by registry name."""

    name: str
    asr: str
    llm: str
    tts: str


@dataclass(frozen=True, slots=True)
class OmniProfile:
    """One omni backend (registry.OMNI_BACKENDS) that serves whole sessions by itself; its
    options are `backend_options[omni]`."""

    name: str
    omni: str


AnyProfile = Profile | OmniProfile

PROFILES: dict[str, AnyProfile] = {
    "fast": Profile("fast", asr="pocketsphinx", llm="gemma", tts="espeak"),
    "quality": Profile("quality", asr="whisper", llm="gemma", tts="kokoro"),
    "realtime": OmniProfile("realtime", omni="realtime"),
}


def profile_for_model(model_name: str | None, default: str) -> str:
    """The profile a client's model name selects: 'voxgate-quality' or 'quality' -> quality."""
    if model_name:
        name = model_name.removeprefix("voxgate-")
        if name in PROFILES:
            return name
    return default


class ModelCatalog:
    """Loads backends by name (once, thread-safe) and assembles a model per profile."""

    def __init__(
        self,
        profiles: Mapping[str, AnyProfile],
        default_profile: str,
        backend_options: Mapping[str, Mapping[str, Any]] | None = None,
        provided: Mapping[tuple[str, str], Any] | None = None,
        deadlines: ModelDeadlines | None = None,
        anticipates: Callable[[AnyProfile], bool] | None = None,
    ) -> None:
        """`anticipates(profile)`: whether a cascade profile's language model may be started on
        the recogniser's hypothesis before the final transcript (server/model/cascade.py);
        none does without it."""
        self._anticipates = anticipates or (lambda profile: False)
        if default_profile not in profiles:
            raise ValueError(f"unknown profile {default_profile!r}; known: {', '.join(profiles)}")
        self.profiles = dict(profiles)
        self.default_profile = default_profile
        self._options = {k: dict(v) for k, v in (backend_options or {}).items()}
        self._backends: dict[tuple[str, str], Any] = dict(provided or {})  # (kind, name) -> backend
        self._models: dict[str, OmniModel] = {}
        self._lock = threading.Lock()
        self._deadlines = deadlines or ModelDeadlines()

    def _backend(self, table: Mapping[str, str], kind: str, name: str) -> Any:
        key = (kind, name)
        if key not in self._backends:
            factory = resolve(table, name, kind)
            backend = factory(self._options.get(name))
            warm_up = getattr(backend, "warm_up", None)  # optional: pay first-call costs now
            if callable(warm_up):
                warm_up()
            self._backends[key] = backend
        return self._backends[key]

    def _omni(self, name: str) -> OmniModel:
        key = ("omni model", name)
        if key not in self._backends:
            factory = resolve(OMNI_BACKENDS, name, "omni model")
            self._backends[key] = factory(self._options.get(name), self._deadlines)
        model: OmniModel = self._backends[key]
        return model

    def close(self) -> None:
        """Release what backends hold outside this process's memory (worker processes)."""
        with self._lock:
            for backend in self._backends.values():
                close = getattr(backend, "close", None)
                if callable(close):
                    close()
            self._backends.clear()
            self._models.clear()

    async def aclose(self) -> None:
        """`close()`, after closing what backends hold on the event loop (the HTTP clients of
        remote backends: `aclose()`), so no connection is left to the garbage collector."""
        for backend in list(self._backends.values()):
            aclose = getattr(backend, "aclose", None)
            if callable(aclose):
                await aclose()
        await asyncio.to_thread(self.close)

    def model(self, profile_name: str) -> OmniModel:
        """The profile's model, loading its backends now if needed (blocking: call off-loop)."""
        with self._lock:
            if profile_name not in self._models:
                profile = self.profiles[profile_name]
                if isinstance(profile, OmniProfile):
                    self._models[profile_name] = self._omni(profile.omni)
                    return self._models[profile_name]
                asr: AsrBackend = self._backend(ASR_BACKENDS, "speech-to-text", profile.asr)
                llm: LlmBackend = self._backend(LLM_BACKENDS, "language model", profile.llm)
                tts: TtsBackend = self._backend(TTS_BACKENDS, "text-to-speech", profile.tts)
                anticipate = self._anticipates(profile)
                self._models[profile_name] = CascadeModel(
                    asr, llm, tts, self._deadlines, anticipate=anticipate
                )
            return self._models[profile_name]

    def speech_backends(self, profile_name: str) -> tuple[AsrBackend, TtsBackend]:
        """The profile's recogniser and voice alone, loading them now if needed (blocking:
        call off-loop), for the speech API (server/http/speech_api.py)."""
        with self._lock:
            profile = self.profiles[profile_name]
            if not isinstance(profile, Profile):
                raise BackendUnavailable(
                    f"profile {profile_name!r} is a whole model: it has no recogniser or voice of its own"
                )
            asr: AsrBackend = self._backend(ASR_BACKENDS, "speech-to-text", profile.asr)
            tts: TtsBackend = self._backend(TTS_BACKENDS, "text-to-speech", profile.tts)
            return asr, tts

    def health(self) -> dict[str, dict[str, object]]:
        """The health of loaded backends that report one (those in worker processes), keyed
        "kind name": {"state": "ok" | "restarting" | "failed", ...}."""
        report = {}
        for (kind, name), backend in list(self._backends.items()):
            health = getattr(backend, "health", None)
            if callable(health):
                report[f"{kind} {name}"] = health()
        return report

    def loaded(self, profile_name: str) -> OmniModel | None:
        return self._models.get(profile_name)

    async def model_async(self, profile_name: str) -> OmniModel:
        loaded = self._models.get(profile_name)
        if loaded is not None:
            return loaded
        return await asyncio.to_thread(self.model, profile_name)
