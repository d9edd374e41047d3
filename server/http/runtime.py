"""What every session of one app shares (`Runtime`, `app.state.runtime`), built by the app's
lifespan (server/http/app.py) and read by the routes for each session."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from server.events import EventHandler
from server.http.cluster_admission import ClusterAdmission
from server.http.knowledge_service import KnowledgeService
from server.http.session_setup import SessionSetup, SessionSetupHook
from server.http.shutdown import LiveSessions
from server.knowledge.grounding import Grounding
from server.knowledge.knowledge import Knowledge
from server.metrics import Metrics
from server.model.base import OmniModel
from server.model.profiles import ModelCatalog, profile_for_model
from server.privacy import PrivacyOptions
from server.settings import Settings
from server.streaming.end_of_turn import semantic_policy
from server.streaming.guard import GuardOptions
from server.streaming.interruptions import InterruptionPolicy
from server.streaming.lifetime import LifetimeOptions
from server.streaming.playout import PlayoutOptions
from server.streaming.session_config import ConversationOptions
from server.streaming.turns import TurnOptions
from server.tools import ToolBox
from server.vad.detector import ClassifierFactory


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
    tools: ToolBox | None = None  # the embedding code's server-side tools
    sessions: LiveSessions = field(default_factory=LiveSessions)  # drained at shutdown
    cluster: ClusterAdmission | None = None  # with Redis: limits shared across replicas
    knowledge: KnowledgeService | None = None  # grounding: operator knowledge, reply checks

    async def model_for(self, requested: str | None) -> OmniModel:
        """The model a session asked for by name (a profile), loaded on first use."""
        if self.catalog is None:
            assert self.fixed_model is not None
            return self.fixed_model
        profile = profile_for_model(requested, self.catalog.default_profile)
        return await self.catalog.model_async(profile)

    def backend_health(self) -> dict[str, dict[str, object]]:
        """Backends that report their health (worker processes): the models' (see
        ModelCatalog.health) and the VAD's when it runs in its worker process."""
        report = self.catalog.health() if self.catalog is not None else {}
        vad_health = getattr(self.vad, "health", None)
        if callable(vad_health):
            report["voice activity"] = vad_health()
        return report

    def active_sessions(self) -> int:
        return int(self.metrics.sessions_active._value.get())

    async def grounding_for(self, knowledge: Knowledge | Path | None) -> Grounding | None:
        """The grounding of a session whose setup gave `knowledge` (None: the server's).
        Raises KnowledgeFileError for a bad knowledge file."""
        if self.knowledge is None:
            return None
        return await self.knowledge.for_session(knowledge)

    def conversation_options(
        self,
        model: str | None = None,
        setup: SessionSetup | None = None,
        grounding: Grounding | None = None,
        call_greeting: str | None = None,
    ) -> ConversationOptions:
        """A session's options: the server's settings, with what the embedding backend's
        `setup` chose for it (None: nothing), the model `model` it asked for and the greeting
        its call asked for (a Twilio <Parameter>; the setup's wins)."""
        s = self.settings
        setup = setup or SessionSetup()
        turns_by = setup.turns_detected_by
        greeting = next(g for g in (setup.greeting, call_greeting, s.greeting) if g is not None).strip()
        return ConversationOptions(
            model_name=model or s.model_name,
            instructions=s.instructions if setup.instructions is None else setup.instructions,
            voice=s.voice if setup.voice is None else setup.voice,
            turn=TurnOptions(
                threshold=s.vad_threshold,
                min_speech_ms=s.min_speech_ms,
                barge_in_min_ms=s.barge_in_min_ms,
                silence_duration_ms=s.silence_duration_ms,
                speculative_silence_ms=s.speculative_silence_ms if s.speculative_silence_ms >= 0 else None,
                semantic=semantic_policy(s.eagerness) if s.turn_detection == "semantic_vad" else None,
                interruption=InterruptionPolicy() if s.barge_in_mode == "words" else None,
            ),
            prefix_padding_ms=s.prefix_padding_ms,
            playout=PlayoutOptions(chunk_ms=s.playout_chunk_ms, lead_ms=s.playout_lead_ms),
            max_audio_ahead_ms=s.max_audio_ahead_ms,
            lifetime=LifetimeOptions(
                max_duration_s=s.session_max_duration_s,
                warning_s=s.session_warning_s,
                idle_timeout_s=s.idle_timeout_s,
            ),
            privacy=PrivacyOptions(
                log_transcripts=s.log_transcripts, redact_transcripts=s.redact_transcripts
            ),
            echo_gate=s.echo_gate,
            echo_cancellation=s.echo_cancellation,
            noise_reduction=None if s.noise_reduction == "none" else s.noise_reduction,
            grounding=grounding,
            model_detects_turns=None if turns_by is None else turns_by == "upstream",
            greeting=greeting or None,
        )


def guard_options(settings: Settings) -> GuardOptions:
    return GuardOptions(
        max_outbound_buffer_ms=settings.max_outbound_buffer_ms,
        max_message_bytes=settings.max_message_bytes,
    )
