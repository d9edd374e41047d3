"""The support desk's own FastAPI backend, with Voxgate mounted into it at /voice.

    app = create_desk_app(DeskSettings(db=Path("support.db")))

What it shows of the embedding API (server/agent.py):
- `VoiceAgent.mount(host, "/voice")`: the voice page at /voice/, the websocket at
  /voice/v1/realtime (and /voice/v1/twilio), beside the backend's own routes;
- tools: `register_tools` (`@agent.tool`), called by the offline dialogue manager
  (`brain=desk_brain`) or, with VOXGATE_LLM=openai, by the remote language model itself;
- `session_setup`: the caller (`?caller=+15550100001`, or the Twilio `<Parameter
  name="caller">`) looked up in the customers table, giving the session its instructions and
  metadata and the call's `CallContext`, and the desk's knowledge (`knowledge.yaml`: shipping,
  returns, opening hours...), which answers those questions before the brain is asked;
- `on_event`: every event stored in the `call_log` table (GET /calls).

The backend's own routes: GET /orders/{order_id}, /refunds, /handoffs, /calls and
/calls/{session_id}; GET / redirects to the voice page.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import RedirectResponse
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from examples.customer_service.brain import desk_brain
from examples.customer_service.call import CallContext, current_call, llm_instructions, normalize_phone
from examples.customer_service.call_log import CallLog
from examples.customer_service.desk import SupportDesk, utc_now
from examples.customer_service.dialogue import opening
from examples.customer_service.spoken_numbers import ORDER_ID_DIGITS
from examples.customer_service.store import SupportStore
from examples.customer_service.tools import register_tools
from server import SessionRequest, SessionSetup, Settings, VoiceAgent
from server.knowledge.knowledge import load_knowledge_file
from server.model.base import OmniModel
from server.vad.detector import ClassifierFactory

TOOL_CAPABLE_LLMS = frozenset({"openai"})  # language models that are offered the tools


KNOWLEDGE_FILE = Path(__file__).resolve().parent / "knowledge.yaml"


def default_db_path() -> Path:
    """$XDG_DATA_HOME/voxgate/support-desk.db (default ~/.local/share/voxgate/...)."""
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "voxgate" / "support-desk.db"


class DeskSettings(BaseSettings):
    """The example's own settings (DESK_* variables); Voxgate's are VOXGATE_* as usual.

    db: the SQLite file, created and seeded on first start.
    demo_caller: who a session without a caller is taken to be (the browser page sends none);
        "" treats such callers as unknown.
    voice_path: where Voxgate is mounted.
    knowledge: the desk's knowledge file (README "Knowledge"); None: none.
    greet: the desk speaks first as a call connects ("Thanks for calling, Ada. ..."), as a
        phone desk does: the session's greeting (SessionSetup.greeting).
    """

    model_config = SettingsConfigDict(env_prefix="DESK_", extra="ignore")

    db: Path = Field(default_factory=default_db_path)
    demo_caller: str = "+15550100001"
    voice_path: str = Field(default="/voice", pattern=r"^/[A-Za-z0-9_/-]*[A-Za-z0-9_-]$")
    knowledge: Path | None = KNOWLEDGE_FILE
    greet: bool = True


def create_desk_app(
    settings: DeskSettings,
    voice_settings: Settings | None = None,
    *,
    model: OmniModel | None = None,
    vad: ClassifierFactory | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> FastAPI:
    """The backend with Voxgate mounted. `voice_settings` default to VOXGATE_* variables;
    `model`/`vad` replace Voxgate's (tests); `clock` gives the time (tests fix it). Raises
    KnowledgeFileError naming the line of a malformed knowledge file."""
    voice = voice_settings if voice_settings is not None else Settings()
    # the sessions' knowledge, given per session by session_setup (the embedding API's way)
    knowledge = load_knowledge_file(settings.knowledge) if settings.knowledge is not None else None
    store = SupportStore(settings.db)
    desk = SupportDesk(store, clock)
    llm_drives = voice.llm in TOOL_CAPABLE_LLMS
    if not llm_drives and "knowledge_hedge_score" not in voice.model_fields_set:
        # the dialogue manager asks for order numbers and runs refunds: only a sure match may
        # answer before it, not a hedged guess ("could you check my refund" is not the return policy)
        voice = voice.model_copy(update={"knowledge_hedge_score": None})

    async def session_setup(request: SessionRequest) -> SessionSetup:
        # ?caller= on the websocket, or <Parameter name="caller" value="{{From}}"/> on a Twilio call
        caller = request.query.get("caller") or request.parameters.get("caller") or settings.demo_caller
        phone = normalize_phone(caller)
        customer = await desk.customer_by_phone(phone) if phone else None
        call = CallContext(call_id=uuid.uuid4().hex[:12], caller=phone or caller, customer=customer)
        current_call.set(call)  # seen by this session's replies and tools (call.py)
        metadata = {"call_id": call.call_id, "caller": call.caller}
        if customer is not None:
            metadata |= {"customer_id": str(customer.id), "customer_name": customer.name}
        return SessionSetup(
            instructions=llm_instructions(customer) if llm_drives else None,
            metadata=metadata,
            knowledge=knowledge,
            greeting=opening(customer.name if customer is not None else None) if settings.greet else "",
        )

    call_log = CallLog(store, clock)
    agent = VoiceAgent(
        voice,
        brain=None if llm_drives else desk_brain,
        session_setup=session_setup,
        on_event=call_log.record,
        model=model,
        vad=vad,
    )
    register_tools(agent, desk)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await desk.open()
        try:
            yield
        finally:
            await asyncio.to_thread(call_log.close)  # the rows still being written, first
            await desk.close()

    host = FastAPI(title="Example support desk", lifespan=lifespan)
    host.state.desk = desk
    host.state.agent = agent

    @host.get("/", include_in_schema=False)
    async def index() -> RedirectResponse:
        return RedirectResponse(settings.voice_path + "/")

    @host.get("/orders/{order_id}")
    async def order(order_id: str) -> dict[str, Any]:
        if len(order_id) != ORDER_ID_DIGITS or not order_id.isdigit():
            raise HTTPException(422, f"an order number has {ORDER_ID_DIGITS} digits")
        status = await desk.order_status(order_id)
        if not status.found:
            raise HTTPException(404, f"no order {order_id}")
        return asdict(status)

    @host.get("/refunds")
    async def refunds() -> list[dict[str, Any]]:
        return [asdict(r) for r in await desk.refunds()]

    @host.get("/handoffs")
    async def handoffs() -> list[dict[str, Any]]:
        return [asdict(h) for h in await desk.handoffs()]

    @host.get("/calls")
    async def calls(limit: int = 200) -> list[dict[str, Any]]:
        """The newest call-log entries of every session, oldest first."""
        if not 1 <= limit <= 10_000:
            raise HTTPException(422, "limit must be between 1 and 10000")
        return [asdict(e) for e in await desk.call_log(None, limit)]

    @host.get("/calls/{session_id}")
    async def call(session_id: str) -> list[dict[str, Any]]:
        entries = await desk.call_log(session_id, 10_000)
        if not entries:
            raise HTTPException(404, f"no call {session_id}")
        return [asdict(e) for e in entries]

    agent.mount(host, settings.voice_path)
    return host
