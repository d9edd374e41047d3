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

    # your backend hands a page a short-lived token bound to this call's settings
    # (docs/security.md); the page connects with ?client_secret=ek_... or the subprotocol
    secret = agent.mint_client_secret(session={"instructions": "..."}, ttl_s=300)

`brain` replaces the language model of every profile; speech-to-text, turn-taking, barge-in
and speech synthesis stay Voxgate's. Without it the profile's language model answers.

Tools (server/tools.py): typed functions the language model may call mid-reply, registered with
`@agent.tool(timeout_s=5, filler="One moment.")` or `VoiceAgent(tools=[...])`. A tool-capable
language model (an OpenAI-compatible endpoint) calls them itself; a brain calls them with
`await request.call_tool("order_status", order_id="123")`. The embedded Gemma 3 270M cannot
call functions reliably and is never offered them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, overload

from fastapi import FastAPI

from server.aio import cancel_and_wait
from server.events import EventHandler
from server.http.access import AccessControl, ClientSecret
from server.http.app import create_app
from server.http.session_setup import SessionRequest as SessionRequest  # re-exported
from server.http.session_setup import SessionSetup as SessionSetup  # re-exported
from server.http.session_setup import SessionSetupHook as SessionSetupHook  # re-exported
from server.model.base import Message, OmniModel, SessionOptions
from server.model.tool_calls import ToolResult, ToolRunner
from server.settings import Settings
from server.telephony.call_parameters import CallParameters, check_call_parameters, check_call_sid
from server.tools import DEFAULT_FILLER_AFTER_MS, DEFAULT_TIMEOUT_S, Tool, ToolBox
from server.vad.detector import ClassifierFactory

_END = object()


@dataclass(frozen=True, slots=True)
class BrainRequest:
    """What the brain gets each turn: the conversation so far (interrupted replies cut to what
    the caller heard), the session's instructions and the metadata `session_setup` gave."""

    history: Sequence[Message]
    instructions: str
    metadata: Mapping[str, str]
    tools: ToolRunner | None = None
    say: Callable[[str], None] | None = None  # speaks a tool's filler between the brain's pieces

    async def call_tool(self, name: str, /, **arguments: Any) -> ToolResult:
        """Run one of the agent's tools: arguments validated, timeout enforced, the filler
        spoken if it is slow, a ToolCalled event published. Never raises for a bad call:
        check `result.ok`, `result.value` (the function's return value), `result.output`."""
        if self.tools is None:
            message = f"no tools are available to this brain (asked for {name!r})"
            output = json.dumps({"error": "unknown_tool", "message": message})
            return ToolResult(name, output, error="unknown_tool", arguments=dict(arguments))
        return await self.tools.call(name, arguments, self.say)


Brain = Callable[[BrainRequest], AsyncIterator[str]]


class BrainLlm:
    """An LlmBackend that asks the embedding code's brain. The brain runs as an owned task
    feeding a queue, so a slow tool's filler can be spoken while the brain awaits the tool."""

    def __init__(self, brain: Brain) -> None:
        self._brain = brain

    async def complete(self, history: Sequence[Message], options: SessionOptions) -> AsyncIterator[str]:
        pieces: asyncio.Queue[str | object] = asyncio.Queue()

        def say(text: str) -> None:
            pieces.put_nowait(f" {text.strip()} ")

        request = BrainRequest(
            tuple(history), options.instructions, dict(options.metadata), options.tools, say
        )

        async def pump() -> None:
            try:
                async for piece in self._brain(request):
                    pieces.put_nowait(piece)
            finally:
                pieces.put_nowait(_END)

        task = asyncio.create_task(pump(), name="brain")
        try:
            while (piece := await pieces.get()) is not _END:
                assert isinstance(piece, str)
                yield piece
            await task  # re-raises the brain's failure
        finally:
            await cancel_and_wait(task, timeout_s=2.0)


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
        tools: Sequence[Tool] = (),
    ) -> None:
        self.settings = settings or Settings()
        self.brain = brain
        self.on_event = on_event
        self.session_setup = session_setup
        self.tools = ToolBox(tools)
        self._model = model
        self._vad = vad
        self._app: FastAPI | None = None

    @overload
    def tool(self, function: Callable[..., Any], /) -> Callable[..., Any]: ...

    @overload
    def tool(
        self,
        function: None = None,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        filler: str | None = None,
        filler_after_ms: int = DEFAULT_FILLER_AFTER_MS,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]: ...

    def tool(
        self,
        function: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        filler: str | None = None,
        filler_after_ms: int = DEFAULT_FILLER_AFTER_MS,
    ) -> Callable[..., Any]:
        """Register a typed function as a tool: `@agent.tool` or `@agent.tool(timeout_s=5,
        filler="One moment, let me check that.")`. The function is returned unchanged.
        Register tools before the app serves its first session."""

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.tools.add(
                Tool.from_function(
                    fn,
                    name=name,
                    description=description,
                    timeout_s=timeout_s,
                    filler=filler,
                    filler_after_ms=filler_after_ms,
                )
            )
            return fn

        return register if function is None else register(function)

    def app(self) -> FastAPI:
        """The Voxgate ASGI app (built once): /v1/realtime, /healthz, /metrics and the page."""
        if self._app is None:
            self._app = create_app(
                self.settings,
                model=self._model,
                vad=self._vad,
                brain=None if self.brain is None else BrainLlm(self.brain),
                on_event=self.on_event,
                session_setup=self.session_setup,
                tools=self.tools,
            )
        return self._app

    async def mint_client_secret(
        self, session: Mapping[str, Any] | None = None, ttl_s: int | None = None
    ) -> ClientSecret:
        """A client secret (`.value`, `ek_...`) for a browser page: a session opened with it
        starts with `session` (a GA session object: instructions, audio.output.voice, model,
        audio.input.turn_detection, audio formats) and it expires `ttl_s` (10..7200; default
        the client_secret_ttl_s setting) seconds from now. Raises InvalidMintRequest naming the
        bad field."""
        access: AccessControl = self.app().state.access
        return await access.mint(dict(session or {}), ttl_s, now_s=time.time())

    async def set_call_parameters(
        self, call_sid: str, parameters: Mapping[str, str], ttl_s: int = 600
    ) -> None:
        """Leave parameters (instructions, voice, model, anything for your session_setup hook)
        for a Twilio call's media stream, from your voice webhook before it answers with
        `<Connect><Stream>`: the replica that takes the stream reads them at its start (in
        Redis when VOXGATE_REDIS_URL is set). Raises ProtocolViolation naming a bad field."""
        checked, ttl = check_call_parameters({"parameters": dict(parameters), "ttl_s": ttl_s})
        calls: CallParameters = self.app().state.calls
        await calls.put(check_call_sid(call_sid), checked, ttl, now_s=time.time())

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
