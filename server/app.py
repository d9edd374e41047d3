"""create_app(settings): the FastAPI app; its lifespan loads the backends once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from server.events import EventHandler
from server.metrics import Metrics
from server.model.base import LlmBackend, OmniModel
from server.model.profiles import PROFILES, ModelCatalog, Profile, profile_for_model
from server.model.registry import VAD_BACKENDS, resolve
from server.settings import Settings
from server.streaming.conversation import ConversationOptions
from server.streaming.playout import PlayoutOptions
from server.streaming.turns import TurnOptions
from server.streaming.vad import ClassifierFactory

if TYPE_CHECKING:
    from server.agent import SessionSetupHook

log = logging.getLogger(__name__)

WEB_CLIENT_DIR = Path(__file__).resolve().parent.parent / "clients" / "web"  # the page served at /


@dataclass(slots=True)
class Runtime:
    """What every session shares: loaded models, metrics, defaults."""

    settings: Settings
    catalog: ModelCatalog | None  # None when one model was given for every session
    fixed_model: OmniModel | None
    vad: ClassifierFactory
    metrics: Metrics
    on_event: EventHandler | None = None
    session_setup: SessionSetupHook | None = None

    async def model_for(self, requested: str | None) -> OmniModel:
        """The model a session asked for by name (a profile), loaded on first use."""
        if self.catalog is None:
            assert self.fixed_model is not None
            return self.fixed_model
        profile = profile_for_model(requested, self.catalog.default_profile)
        return await self.catalog.model_async(profile)

    def active_sessions(self) -> int:
        return int(self.metrics.sessions_active._value.get())

    def conversation_options(
        self, model: str | None = None, instructions: str | None = None, voice: str | None = None
    ) -> ConversationOptions:
        s = self.settings
        return ConversationOptions(
            model_name=model or s.model_name,
            instructions=s.instructions if instructions is None else instructions,
            voice=s.voice if voice is None else voice,
            turn=TurnOptions(
                threshold=s.vad_threshold,
                min_speech_ms=s.min_speech_ms,
                barge_in_min_ms=s.barge_in_min_ms,
                silence_duration_ms=s.silence_duration_ms,
                speculative_silence_ms=s.speculative_silence_ms if s.speculative_silence_ms >= 0 else None,
            ),
            prefix_padding_ms=s.prefix_padding_ms,
            playout=PlayoutOptions(chunk_ms=s.playout_chunk_ms, lead_ms=s.playout_lead_ms),
            max_audio_ahead_ms=s.max_audio_ahead_ms,
        )


BRAIN_BACKEND = "embedded-brain"


def build_catalog(settings: Settings, brain: LlmBackend | None = None) -> ModelCatalog:
    """The profiles, with the default one's backends replaced by any set in settings; a
    `brain` from embedding code replaces the language model of every profile."""
    profiles = dict(PROFILES)
    default = profiles[settings.profile]
    profiles[settings.profile] = Profile(
        default.name,
        asr=settings.asr or default.asr,
        llm=settings.llm or default.llm,
        tts=settings.tts or default.tts,
    )
    provided: dict[tuple[str, str], Any] = {}
    if brain is not None:
        profiles = {n: Profile(p.name, p.asr, BRAIN_BACKEND, p.tts) for n, p in profiles.items()}
        provided[("language model", BRAIN_BACKEND)] = brain
    return ModelCatalog(profiles, settings.profile, settings.backend_options, provided)


def preload(settings: Settings, catalog: ModelCatalog) -> None:
    """Load the default profile (and any listed) now, so a missing model fails at startup."""
    for name in [settings.profile, *settings.preload_profiles]:
        catalog.model(name)


def load_vad(settings: Settings) -> ClassifierFactory:
    factory: ClassifierFactory = resolve(VAD_BACKENDS, settings.vad, "voice activity")(None)
    return factory


def create_app(
    settings: Settings,
    model: OmniModel | None = None,
    vad: ClassifierFactory | None = None,
    catalog: ModelCatalog | None = None,
    brain: LlmBackend | None = None,
    on_event: EventHandler | None = None,
    session_setup: SessionSetupHook | None = None,
) -> FastAPI:
    """The Voxgate app.

    `model` serves every session with one given model (tests, embedding); otherwise `catalog`
    (or one built from settings) serves the profiles, loading the default one at startup.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        models = None if model is not None else (catalog or build_catalog(settings, brain))
        if models is not None:
            await asyncio.to_thread(preload, settings, models)
        app.state.runtime = Runtime(
            settings=settings,
            catalog=models,
            fixed_model=model,
            vad=vad if vad is not None else load_vad(settings),
            metrics=Metrics(),
            on_event=on_event,
            session_setup=session_setup,
        )
        try:
            yield
        finally:
            if models is not None and catalog is None:  # we built it, we close it
                await asyncio.to_thread(models.close)

    from server.routes import router

    app = FastAPI(title="Voxgate", lifespan=lifespan)
    app.include_router(router)
    if WEB_CLIENT_DIR.is_dir():  # mounted last: the API routes above take precedence
        app.mount("/", StaticFiles(directory=WEB_CLIENT_DIR, html=True), name="web-client")
    return app
