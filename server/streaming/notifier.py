"""EventNotifier: hands conversation events to embedding code without ever stalling audio.

`publish()` never blocks (a bounded queue; beyond it events are dropped and counted); a task
of the conversation runs `run()`, calling the handler in order, each call bounded in time;
after the conversation ends, `drain()` delivers what is left, within a bound.

Privacy (docs/privacy.md): with `redact_transcripts` every event is redacted here, before the
session log and the handler see it; the session log (SessionLog) records every event, whether
or not a handler is set. A failing handler is logged without its exception's message unless
`log_transcripts`: the handler had the transcript in hand and may quote it.
"""

from __future__ import annotations

import asyncio
import logging

from server.events import EVENT_HANDLER_TIMEOUT_S, AgentEvent, EventHandler
from server.logs import error_fields
from server.privacy import PrivacyOptions, redact_event
from server.streaming.session_log import SessionLog

log = logging.getLogger(__name__)


class EventNotifier:
    def __init__(
        self, handler: EventHandler | None, max_pending: int = 1000, privacy: PrivacyOptions | None = None
    ) -> None:
        self._handler = handler
        self._privacy = privacy or PrivacyOptions()
        self._session_log = SessionLog(self._privacy)
        self._queue: asyncio.Queue[AgentEvent] = asyncio.Queue(max_pending)
        self.dropped = 0

    def publish(self, event: AgentEvent) -> None:
        if self._privacy.redact_transcripts:
            event = redact_event(event)
        self._session_log.record(event)
        if self._handler is None:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("event handler is too slow; event dropped", extra={"event": type(event).__name__})

    async def run(self) -> None:
        while True:
            await self._deliver(await self._queue.get())

    async def drain(self, timeout_s: float = EVENT_HANDLER_TIMEOUT_S) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                while not self._queue.empty():
                    await self._deliver(self._queue.get_nowait())
        except TimeoutError:
            log.warning("events left undelivered at session end", extra={"count": self._queue.qsize()})

    async def _deliver(self, event: AgentEvent) -> None:
        assert self._handler is not None
        try:
            async with asyncio.timeout(EVENT_HANDLER_TIMEOUT_S):
                await self._handler(event)
        except TimeoutError:
            log.warning("event handler timed out", extra={"event": type(event).__name__})
        except Exception as exc:
            log.error(
                "event handler failed",
                extra={
                    "session_id": event.session_id,
                    "event": type(event).__name__,
                    **error_fields(exc, with_message=self._privacy.log_transcripts),
                },
            )
