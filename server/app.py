"""create_app(settings): the FastAPI app; its lifespan loads the backends once."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI

from server.metrics import Metrics
from server.model.base import OmniModel
from server.model.cascade import CascadeModel
from server.model.registry import ASR_BACKENDS, LLM_BACKENDS, TTS_BACKENDS, VAD_BACKENDS, resolve
from server.settings import Settings
from server.streaming.conversation import ConversationOptions
from server.streaming.playout import PlayoutOptions
from server.streaming.turns import TurnOptions
from server.streaming.vad import ClassifierFactory

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Runtime:
    """What every session shares: loaded models, metrics, defaults."""

    settings: Settings
    model: OmniModel
    vad: ClassifierFactory
    metrics: Metrics

    def active_sessions(self) -> int:
        return int(self.metrics.sessions_active._value.get())

    def conversation_options(self, model: str | None = None) -> ConversationOptions:
        s = self.settings
        return ConversationOptions(
            model_name=model or s.model_name,
            instructions=s.instructions,
            voice=s.voice,
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


def load_model(settings: Settings) -> OmniModel:
    asr = resolve(ASR_BACKENDS, settings.asr, "speech-to-text")(None)
    llm = resolve(LLM_BACKENDS, settings.llm, "language model")(None)
    tts = resolve(TTS_BACKENDS, settings.tts, "text-to-speech")(None)
    return CascadeModel(asr, llm, tts)


def load_vad(settings: Settings) -> ClassifierFactory:
    factory: ClassifierFactory = resolve(VAD_BACKENDS, settings.vad, "voice activity")(None)
    return factory


def create_app(
    settings: Settings,
    model: OmniModel | None = None,
    vad: ClassifierFactory | None = None,
) -> FastAPI:
    """The Voxgate app. `model`/`vad` override the backends named in settings (tests, embedding)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.runtime = Runtime(
            settings=settings,
            model=model if model is not None else load_model(settings),
            vad=vad if vad is not None else load_vad(settings),
            metrics=Metrics(),
        )
        yield

    from server.routes import router

    app = FastAPI(title="Voxgate", lifespan=lifespan)
    app.include_router(router)
    return app
