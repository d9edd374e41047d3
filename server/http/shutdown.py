"""Graceful shutdown: the live sessions of an app, drained before the server stops.

On SIGTERM (or `server.should_exit = True`) `GracefulServer.shutdown` runs, before uvicorn's
own shutdown:

1. Readiness flips (`LiveSessions.is_draining`: `/readyz` answers 503 "draining"), then the
   listening sockets close (new connections are refused: a proxy retries the next replica),
   and an upgrade that still arrives on a kept-alive connection is refused by the routes (HTTP
   503, or close 1013, "server shutting down").
2. Let replies finish: a session that is not replying (no turn being transcribed, no reply
   being prepared, generated or played) is stopped at once; the others as soon as their reply
   is over, for up to the grace period (`shutdown_grace_s`).
3. Then every session still open is stopped. A stopped session's route closes its websocket
   with 1001 "server shutting down".

Why before uvicorn's shutdown: uvicorn (0.54) answers a shutdown by closing every websocket
at once with 1012, without a grace period, and only then waits (up to its
`timeout_graceful_shutdown`) for the handlers to return. Its lifespan shutdown comes after
that, too late to drain. Sessions of an app served another way are not drained: stop them with
`await LiveSessions.drain(...)` before the server closes the connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any, Protocol, cast

import uvicorn

log = logging.getLogger(__name__)

SHUTDOWN_REASON = "server shutting down"
SHUTDOWN_LEFTOVER_S = 5  # uvicorn's timeout_graceful_shutdown, after the drain
_POLL_S = 0.05  # how often the drain looks at the sessions
_CLOSE_WAIT_S = 3.0  # after stopping them, how long to wait for the sessions to close
_STOP_MARGIN_S = 5.0  # startup not yet over, the lifespan's shutdown, process exit


def shutdown_bound_s(grace_s: float) -> float:
    """The longest a graceful shutdown with this grace period should take, from SIGTERM to
    the process's exit (a supervisor kills a worker that takes longer)."""
    return grace_s + _CLOSE_WAIT_S + SHUTDOWN_LEFTOVER_S + _STOP_MARGIN_S


class DrainableSession(Protocol):
    async def run(self) -> None: ...

    @property
    def is_replying(self) -> bool: ...

    def stop(self) -> None:
        """End the session soon; its route then closes the websocket."""
        ...


class LiveSessions:
    """The sessions an app is running, and whether it is shutting down.

    Routes call `run(session)` (it registers the session while it runs) and refuse new ones
    once `is_draining`. The server calls `drain()` once, at shutdown.
    """

    def __init__(self) -> None:
        self._sessions: set[DrainableSession] = set()
        self._ended = asyncio.Event()  # set whenever a session ends
        self.is_draining = False

    def __len__(self) -> int:
        return len(self._sessions)

    async def run(self, session: DrainableSession) -> None:
        """`await session.run()`, counted as live meanwhile (stopped at once when draining)."""
        self._sessions.add(session)
        try:
            if self.is_draining:
                session.stop()
            await session.run()
        finally:
            self._sessions.discard(session)
            self._ended.set()

    async def drain(self, grace_s: float, abandon: Callable[[], bool] = lambda: False) -> None:
        """Refuse new sessions, stop each live one when it is not replying, stop all after
        `grace_s`, and wait (bounded) for them to end. `abandon()` true: stop all now."""
        self.is_draining = True
        loop = asyncio.get_running_loop()
        deadline_s = loop.time() + grace_s
        while self._sessions and loop.time() < deadline_s and not abandon():
            for session in list(self._sessions):
                if not session.is_replying:
                    session.stop()
            await asyncio.sleep(_POLL_S)
        replying = sum(1 for session in self._sessions if session.is_replying)
        if replying:
            log.warning("grace period over: stopping sessions mid-reply", extra={"sessions": replying})
        for session in list(self._sessions):
            session.stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_WAIT_S):
                while self._sessions:
                    self._ended.clear()
                    await self._ended.wait()
        if self._sessions:
            log.error("sessions did not end after stop", extra={"sessions": len(self._sessions)})


def app_sessions(app: Any) -> Callable[[], LiveSessions | None]:
    """The live sessions of a Voxgate app (`create_app`), once its lifespan has started."""

    def sessions() -> LiveSessions | None:
        runtime = getattr(app.state, "runtime", None)
        return None if runtime is None else cast(LiveSessions, runtime.sessions)

    return sessions


class GracefulServer(uvicorn.Server):
    """uvicorn's server, draining `sessions()` (None: nothing to drain) before its shutdown.

    `sessions` is looked up at shutdown because the app creates it in its lifespan."""

    def __init__(
        self, config: uvicorn.Config, sessions: Callable[[], LiveSessions | None], grace_s: float
    ) -> None:
        super().__init__(config)
        self._live = sessions
        self.grace_s = grace_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        live = self._live()
        if live is not None:  # readiness (/readyz) flips before anything else changes
            live.is_draining = True
        for server in self.servers:  # stop accepting; uvicorn's shutdown does it again, harmlessly
            server.close()
        for sock in sockets or []:
            sock.close()
        if live is not None and not self.force_exit:
            log.info("draining sessions", extra={"sessions": len(live), "grace_s": self.grace_s})
            await live.drain(self.grace_s, abandon=lambda: self.force_exit)
        await super().shutdown(sockets)
