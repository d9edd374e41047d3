"""The embedding API: Voxgate inside a customer-service backend.

    from server import VoiceAgent, SessionSetup

    async def brain(request: BrainRequest) -> AsyncIterator[str]:   # optional: your own logic
        yield f"You said: {request.history[-1].text}"

    async def setup(request: SessionRequest) -> SessionSetup:      # optional: per call
        caller = request.query.get("caller", "")
        return SessionSetup(instructions=f"The caller is {caller}.", metadata={"caller": caller})

    async def on_event(event: AgentEvent) -> None:                 # optional: transcripts, CRM
        ...

    agent = VoiceAgent(Settings(), brain=brain, session_setup=setup, on_event=on_event)
    agent.mount(your_fastapi_app, "/voice")    # ws://.../voice/v1/realtime and /voice/ (the page)
    # or standalone: uvicorn.run(agent.app())

`brain` replaces the language model of every profile; speech-to-text, turn-taking, barge-in
and speech synthesis stay Voxgate's. Without it the profile's language model answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI

from server.events import EventHandler
from server.model.base import Message, OmniModel, SessionOptions
from server.settings import Settings
from server.streaming.vad import ClassifierFactory


@dataclass(frozen=True, slots=True)
class BrainRequest:
    """What the brain gets each turn: the conversation so far (interrupted replies cut to what
    the caller heard), the session's instructions and the metadata `session_setup` gave."""

    history: Sequence[Message]
    instructions: str
    metadata: Mapping[str, str]


Brain = Callable[[BrainRequest], AsyncIterator[str]]


@dataclass(frozen=True, slots=True)
class SessionRequest:
    """The websocket upgrade a session starts from."""

    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    client_host: str | None


@dataclass(frozen=True, slots=True)
class SessionSetup:
    """Per-session settings from the embedding backend; None leaves the server default.
    A client's own session.update can still change instructions and voice later."""

    instructions: str | None = None
    voice: str | None = None
    profile: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


SessionSetupHook = Callable[[SessionRequest], Awaitable[SessionSetup]]


class BrainLlm:
    """An LlmBackend that asks the embedding code's brain."""

    def __init__(self, brain: Brain) -> None:
        self._brain = brain

    async def complete(self, history: Sequence[Message], options: SessionOptions) -> AsyncIterator[str]:
        request = BrainRequest(tuple(history), options.instructions, dict(options.metadata))
        async for piece in self._brain(request):
            yield piece


class VoiceAgent:
    """Voxgate as a component: build its app, or mount it into yours."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        brain: Brain | None = None,
        on_event: EventHandler | None = None,
        session_setup: SessionSetupHook | None = None,
        model: OmniModel | None = None,
        vad: ClassifierFactory | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.brain = brain
        self.on_event = on_event
        self.session_setup = session_setup
        self._model = model
        self._vad = vad
        self._app: FastAPI | None = None

    def app(self) -> FastAPI:
        """The Voxgate ASGI app (built once): /v1/realtime, /healthz, /metrics and the page."""
        if self._app is None:
            from server.app import create_app

            self._app = create_app(
                self.settings,
                model=self._model,
                vad=self._vad,
                brain=None if self.brain is None else BrainLlm(self.brain),
                on_event=self.on_event,
                session_setup=self.session_setup,
            )
        return self._app

    def mount(self, host: FastAPI, path: str = "/voxgate") -> None:
        """Serve Voxgate under `path` of `host`; its models load with the host's lifespan."""
        sub = self.app()
        host.mount(path, sub)
        host_lifespan = host.router.lifespan_context

        @asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[Any]:
            async with sub.router.lifespan_context(sub), host_lifespan(app) as state:
                yield state

        host.router.lifespan_context = lifespan
