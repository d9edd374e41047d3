"""create_app(settings): the FastAPI app; its lifespan loads the backends once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from server.aio import cancel_and_wait
from server.audio_processing import ProcessingOptions, open_input_processor
from server.errors import BackendUnavailable
from server.events import EventHandler
from server.http.access import AccessControl, ApiKeys, OriginPolicy, RedisClientSecrets, read_key_file
from server.http.admission import Admission, AdmissionOptions, RateLimit
from server.http.calls import router as calls_router
from server.http.client_secrets import router as client_secrets_router
from server.http.cluster_admission import ClusterAdmission, ClusterOptions
from server.http.knowledge_service import KnowledgeService
from server.http.routes import router
from server.http.runtime import Runtime
from server.http.session_setup import SessionSetupHook
from server.http.speech_api import SpeechRequests
from server.http.speech_api import router as speech_router
from server.metrics import Metrics
from server.model.base import LlmBackend, OmniModel
from server.model.deadlines import ModelDeadlines
from server.model.profiles import PROFILES, AnyProfile, ModelCatalog, Profile
from server.model.registry import VAD_BACKENDS, resolve
from server.settings import Settings
from server.shared.redis_state import RedisState
from server.telephony.call_parameters import LocalCallParameters, RedisCallParameters
from server.tools import ToolBox
from server.vad.batch import batched
from server.vad.detector import BatchableVad, ClassifierFactory
from server.vad.process import ProcessVad

log = logging.getLogger(__name__)

WEB_CLIENT_DIR = Path(__file__).resolve().parents[2] / "clients" / "web"  # the page served at /


BRAIN_BACKEND = "embedded-brain"
# language models run on the recogniser's hypothesis before the final transcript: local and
# without side effects (never a brain, a hosted model or anything that may call tools) ...
ANTICIPATING_LLMS = frozenset({"gemma", "rules"})
# ... beside a recogniser whose final pass is light (PocketSphinx, one pass: p50 572 -> 473 ms).
# Whisper decodes the whole utterance at the end on both cores; Gemma beside it made the
# quality profile slower (p50 1415 -> 1998 ms, BENCHMARKS.md)
ANTICIPATING_RECOGNISERS = frozenset({"pocketsphinx"})


def build_catalog(settings: Settings, brain: LlmBackend | None = None) -> ModelCatalog:
    """The profiles, with the default one's backends replaced by any set in settings; a
    `brain` from embedding code replaces the language model of every profile."""
    profiles: dict[str, AnyProfile] = dict(PROFILES)
    default = profiles[settings.profile]
    if isinstance(default, Profile):  # an omni profile has no ASR/LLM/TTS to replace
        profiles[settings.profile] = Profile(
            default.name,
            asr=settings.asr or default.asr,
            llm=settings.llm or default.llm,
            tts=settings.tts or default.tts,
        )
    provided: dict[tuple[str, str], Any] = {}
    if brain is not None:  # a brain answers in cascades; an omni model has its own
        profiles = {
            n: Profile(p.name, p.asr, BRAIN_BACKEND, p.tts) if isinstance(p, Profile) else p
            for n, p in profiles.items()
        }
        provided[("language model", BRAIN_BACKEND)] = brain

    def anticipates(profile: AnyProfile) -> bool:
        return (
            isinstance(profile, Profile)
            and settings.anticipate_replies
            and profile.llm in ANTICIPATING_LLMS
            and profile.asr in ANTICIPATING_RECOGNISERS
        )

    return ModelCatalog(
        profiles,
        settings.profile,
        settings.backend_options,
        provided,
        deadlines=model_deadlines(settings),
        anticipates=anticipates,
    )


def model_deadlines(settings: Settings) -> ModelDeadlines:
    return ModelDeadlines(
        asr_final_timeout_s=settings.asr_final_timeout_s,
        llm_first_token_timeout_s=settings.llm_first_token_timeout_s,
        llm_token_gap_timeout_s=settings.llm_token_gap_timeout_s,
        tts_phrase_timeout_s=settings.tts_phrase_timeout_s,
    )


def preload(settings: Settings, catalog: ModelCatalog) -> None:
    """Load the default profile (and any listed) now, so a missing model fails at startup."""
    for name in [settings.profile, *settings.preload_profiles]:
        catalog.model(name)


def check_input_processing(settings: Settings) -> None:
    """Load the input audio processor now if the settings use it, so that a missing library
    fails at startup rather than in every session."""
    options = ProcessingOptions(
        echo_cancellation=settings.echo_cancellation,
        noise_reduction=None if settings.noise_reduction == "none" else settings.noise_reduction,
    )
    if options.enabled:
        open_input_processor(options, 16_000).close()


def load_vad(settings: Settings) -> ClassifierFactory:
    factory: ClassifierFactory = resolve(VAD_BACKENDS, settings.vad, "voice activity")(None)
    return factory


async def serve_vad(
    settings: Settings, given: ClassifierFactory | None, metrics: Metrics
) -> ClassifierFactory:
    """The VAD sessions use. One that can batch (Silero) classifies the frames of all sessions
    together: in a worker process when the server loads it by name (`vad_process`), else on
    the event loop; any other is used as it is."""
    factory = given if given is not None else load_vad(settings)
    on_batch = metrics.vad_batch_frames.observe
    if given is None and settings.vad_process and isinstance(factory, BatchableVad):
        worker = ProcessVad(settings.vad, factory, on_batch=on_batch)
        try:
            await worker.start()
            return worker
        except BackendUnavailable as exc:
            log.warning(
                "VAD worker process unavailable; classifying on the event loop", extra={"error": str(exc)}
            )
    return batched(factory, on_batch=on_batch)


def build_access(settings: Settings, shared: RedisState | None = None) -> AccessControl:
    """Keys (from settings and the key file), origins and the client-secret TTL, the secrets
    in `shared` Redis when given; raises AccessConfigError when they cannot be used (the
    server must not start)."""
    keys = [key.get_secret_value() for key in settings.api_keys]
    if settings.api_keys_file is not None:
        keys += read_key_file(settings.api_keys_file)
    return AccessControl(
        ApiKeys(keys),
        OriginPolicy(settings.allowed_origins),
        secrets=None if shared is None else RedisClientSecrets(shared),
        default_ttl_s=settings.client_secret_ttl_s,
    )


def rate_limits(settings: Settings) -> tuple[RateLimit, RateLimit]:
    """(per client address, per API key)."""
    return (
        RateLimit(settings.ip_connections_per_minute, settings.ip_connection_burst),
        RateLimit(settings.key_connections_per_minute, settings.key_connection_burst),
    )


def build_admission(settings: Settings) -> Admission:
    """The session limit and connection-rate limits of one process (docs/operations.md); with
    Redis the rate limits are the cluster's (`build_cluster`), so they are off here."""
    per_ip, per_key = rate_limits(settings)
    if settings.redis_url is not None:
        per_ip = per_key = RateLimit(0, 1)
    return Admission(AdmissionOptions(max_sessions=settings.max_sessions, per_ip=per_ip, per_key=per_key))


def open_shared_state(settings: Settings) -> RedisState | None:
    """The Redis client when `redis_url` is set (it connects on first use)."""
    if settings.redis_url is None:
        return None
    return RedisState(settings.redis_url.get_secret_value(), settings.redis_prefix, settings.redis_timeout_s)


def build_cluster(settings: Settings, shared: RedisState, metrics: Metrics) -> ClusterAdmission:
    per_ip, per_key = rate_limits(settings)
    options = ClusterOptions(
        replica_id=settings.replica_id,
        per_ip=per_ip,
        per_key=per_key,
        replica_max_sessions=settings.replica_max_sessions,
        global_max_sessions=settings.global_max_sessions,
        slot_ttl_s=settings.redis_slot_ttl_s,
        caps_on_failure=settings.redis_session_caps_on_failure,
    )
    return ClusterAdmission(
        shared, options, on_failure=lambda op: metrics.shared_state_failures.labels(operation=op).inc()
    )


def create_app(
    settings: Settings,
    model: OmniModel | None = None,
    vad: ClassifierFactory | None = None,
    catalog: ModelCatalog | None = None,
    brain: LlmBackend | None = None,
    on_event: EventHandler | None = None,
    session_setup: SessionSetupHook | None = None,
    access: AccessControl | None = None,
    tools: ToolBox | None = None,
    knowledge: KnowledgeService | None = None,
) -> FastAPI:
    """The Voxgate app.

    `model` serves every session with one given model (tests, embedding); otherwise `catalog`
    (or one built from settings) serves the profiles, loading the default one at startup.
    `access` (default: built from settings now, so a bad key file fails here) decides who
    may connect; it is `app.state.access`. `knowledge` (default: built from settings at
    startup, which raises KnowledgeFileError for a malformed VOXGATE_KNOWLEDGE) grounds the
    replies; its checks apply to the server's own language models, not to a brain or `model`.
    """
    shared = open_shared_state(settings)
    access = access if access is not None else build_access(settings, shared)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        models = None if model is not None else (catalog or build_catalog(settings, brain))
        if models is not None:
            await asyncio.to_thread(preload, settings, models)
        await asyncio.to_thread(check_input_processing, settings)
        grounding = knowledge or await asyncio.to_thread(
            KnowledgeService.from_settings, settings, checks_replies=brain is None and model is None
        )
        metrics = Metrics(replica_id=settings.replica_id)
        served_vad = await serve_vad(settings, vad, metrics)
        cluster = None if shared is None else build_cluster(settings, shared, metrics)
        app.state.runtime = Runtime(
            settings=settings,
            catalog=models,
            fixed_model=model,
            vad=served_vad,
            metrics=metrics,
            on_event=on_event,
            session_setup=session_setup,
            tools=tools,
            cluster=cluster,
            knowledge=grounding,
        )
        heartbeat = (
            None if cluster is None else asyncio.create_task(cluster.run_heartbeat(), name="slot-heartbeat")
        )
        try:
            yield
        finally:
            if cluster is not None:
                assert heartbeat is not None
                await cancel_and_wait(heartbeat, timeout_s=1.0)
                await cluster.close()
            if isinstance(served_vad, ProcessVad):  # its worker process is ours
                await served_vad.close()
            if models is not None and catalog is None:  # we built it, we close it
                await models.aclose()

    app = FastAPI(title="Voxgate", lifespan=lifespan)
    app.state.access = access
    app.state.calls = LocalCallParameters() if shared is None else RedisCallParameters(shared)
    app.state.admission = build_admission(settings)  # counted across /v1/realtime and /v1/twilio
    app.include_router(router)
    app.include_router(client_secrets_router)
    app.include_router(calls_router)
    if settings.speech_api:  # the embedded models behind OpenAI's audio endpoints
        app.state.speech_requests = SpeechRequests(settings.speech_api_max_requests)
        app.include_router(speech_router)
    # cross-origin HTTP (minting client secrets from a page elsewhere) only for listed origins
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"] if access.origins.allow_any else access.origins.listed,
        allow_methods=["GET", "POST"],
        allow_headers=["authorization", "content-type"],
        max_age=600,
    )
    if WEB_CLIENT_DIR.is_dir():  # mounted last: the API routes above take precedence
        app.mount("/", StaticFiles(directory=WEB_CLIENT_DIR, html=True), name="web-client")
    return app
