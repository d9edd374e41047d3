"""Voxgate's in-process events, stored: one `call_log` row per event, as a CRM would keep them.

`CallLog.record` is the `VoiceAgent(on_event=...)` handler. Voxgate calls it in order for each
session and bounds each call (server/events.py), so the write runs in a thread of its own, in
order, and a slow disk never holds up the conversation. `log_row` (pure) decides what a row
holds: the transcripts, tool calls with their arguments and results, interruptions and each
turn's voice-to-voice latency.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, is_dataclass
from datetime import datetime

from examples.customer_service.desk import utc_now
from examples.customer_service.store import SupportStore
from server import (
    AgentEvent,
    AssistantTurn,
    Interrupted,
    SessionEnded,
    SessionStarted,
    TurnLatency,
    UserTurn,
)
from server.events import ToolCalled


@dataclass(frozen=True, slots=True)
class LogRow:
    session_id: str
    kind: str
    item_id: str | None = None
    text: str | None = None
    detail: Mapping[str, object] | None = None


def log_row(event: AgentEvent) -> LogRow:
    match event:
        case SessionStarted(session_id=sid, metadata=metadata):
            return LogRow(sid, "session_started", detail=dict(metadata))
        case UserTurn(session_id=sid, item_id=item, transcript=transcript):
            return LogRow(sid, "user_turn", item, transcript)
        case AssistantTurn(session_id=sid, item_id=item, text=text, status=status, interrupted=cut):
            return LogRow(sid, "assistant_turn", item, text, {"status": status, "interrupted": cut})
        case Interrupted(session_id=sid, item_id=item, heard_ms=heard_ms):
            return LogRow(sid, "interrupted", item, detail={"heard_ms": heard_ms})
        case TurnLatency(session_id=sid, item_id=item, voice_to_voice_ms=latency_ms):
            return LogRow(sid, "turn_latency", item, detail={"voice_to_voice_ms": round(latency_ms, 1)})
        case ToolCalled():
            detail = {
                "call_id": event.call_id,
                "arguments": event.arguments,
                "result": event.result,
                "error": event.error,
                "duration_ms": round(event.duration_ms, 1),
                "client_side": event.client_side,
            }
            return LogRow(event.session_id, "tool_called", text=event.name, detail=detail)
        case SessionEnded(session_id=sid):
            return LogRow(sid, "session_ended")
    # an event kind newer than this module: keep all its fields
    fields = asdict(event) if is_dataclass(event) and not isinstance(event, type) else {}
    return LogRow(str(fields.pop("session_id", "")), type(event).__name__, detail=fields)


class CallLog:
    """Rows are written one at a time, in order, by one thread. The notifier stops waiting for
    a handler after its time bound, but a write it gave up on still runs; with
    `asyncio.to_thread`'s pool the next event's write could overtake it, and a tool call's row
    land after the session's `session_ended` (seen in CI on a busy machine)."""

    def __init__(self, store: SupportStore, clock: Callable[[], datetime] = utc_now) -> None:
        self.store = store
        self._clock = clock
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="call-log")

    async def record(self, event: AgentEvent) -> None:
        row = log_row(event)
        write = functools.partial(
            self.store.add_call_log,
            row.session_id,
            self._clock(),
            row.kind,
            row.item_id,
            row.text,
            row.detail,
        )
        await asyncio.get_running_loop().run_in_executor(self._writer, write)

    def close(self) -> None:
        """Wait for the rows still being written (blocking: call it from a thread)."""
        self._writer.shutdown(wait=True)
