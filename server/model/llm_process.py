"""The client of the language-model worker process: an `LlmBackend` that survives its crashes.

The model runs in `server.model.llm_worker` (one process per server, turns served one at a
time, generation on its main thread). This side keeps every session's turn and routes the
worker's answers to it; it is shared by all sessions and event loops.

    llm = LlmProcess.start("gemma", options, ...)   # blocking: spawns the worker, waits for it
    async for piece in llm.complete(history, options): ...
    llm.health()                                    # for /healthz: ok, restarting or failed
    llm.close()

When the worker dies (a segfault in native code, killed by the OOM killer or an operator):
- the turn it was generating fails with `BackendError` naming how it died: that reply ends
  with an `error` event and `response.done` failed, and its session goes on;
- turns that were waiting their go are kept and sent to the next worker: other sessions
  only wait the restart (≈ 2 s);
- a new worker is started at once, up to `RESTART_ATTEMPTS` times in a row; if none comes
  up, the backend is failed for good: every turn fails with `BackendUnavailable` and
  `health()` says why, so /healthz reports it.

Threads: one reader thread per server blocks on the worker's socket and hands each answer to
its turn's event loop with `call_soon_threadsafe`; it also restarts the worker. Requests are
written from the caller's thread under `_lock` (a few kB, into a socket the worker drains
between tokens). Nothing here blocks an event loop for longer than that write.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import signal
import socket
import subprocess
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from server.errors import BackendError, BackendUnavailable
from server.model.base import Message, SessionOptions
from server.model.llama_runtime import REBUILD_HINT
from server.model.llm_worker import read_message, send_message
from server.model.worker_process import launch

log = logging.getLogger(__name__)

SPAWN_TIMEOUT_S: Final = 120.0  # interpreter, llama.cpp, a first join of the 250 MB model file
STOP_WAIT_S: Final = 2.0  # a closed turn's wait for the worker to confirm it stopped
CLOSE_TIMEOUT_S: Final = 2.0
RESTART_ATTEMPTS: Final = 3

State = Literal["ok", "restarting", "failed"]


@dataclass(frozen=True, slots=True)
class _End:
    error: BaseException | None = None
    value: float | None = None  # an eot request's answer


@dataclass(slots=True)
class _Turn:
    id: int
    loop: asyncio.AbstractEventLoop
    request: dict[str, Any]
    pieces: asyncio.Queue[str | _End] = field(default_factory=asyncio.Queue)
    sent: bool = False
    started: bool = False
    ended: bool = False

    def post(self, item: str | _End) -> None:
        """Hand an item to the turn's loop (from any thread); a closed loop has no listener."""
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.pieces.put_nowait, item)


@dataclass(slots=True)
class _Worker:
    process: subprocess.Popen[bytes]
    sock: socket.socket
    cpu_variant: str


class LlmProcess:
    """An `LlmBackend` whose model runs in a worker process. Build it with `start()`."""

    def __init__(
        self, engine: str, worker_options: Mapping[str, object], options: Any, stats_type: Callable[..., Any]
    ) -> None:
        self.engine = engine
        self.options = options  # the engine's parsed options (max_tokens, ...)
        self.last_stats: Any = None  # the stats of the last turn that ended
        self._worker_options = json.dumps(dict(worker_options))
        self._stats_type = stats_type
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._turns: dict[int, _Turn] = {}
        self._worker: _Worker | None = None
        self._state: State = "restarting"
        self._closing = False
        self._reader: threading.Thread | None = None
        self.restarts = 0
        self.last_crash: str | None = None

    @classmethod
    def start(
        cls,
        engine: str,
        worker_options: Mapping[str, object],
        options: Any,
        stats_type: Callable[..., Any],
    ) -> LlmProcess:
        """Spawn the worker and wait until its model is loaded (blocking). Raises
        `BackendUnavailable` naming the fix if it fails or crashes while loading."""
        backend = cls(engine, worker_options, options, stats_type)
        backend._worker = backend._spawn()
        backend._state = "ok"
        backend._reader = threading.Thread(
            target=backend._read_answers, name=f"{engine}-llm-reader", daemon=True
        )
        backend._reader.start()
        return backend

    # --- what sessions use -----------------------------------------------------------------

    async def complete(
        self, history: Sequence[Message], options: SessionOptions
    ) -> AsyncGenerator[str, None]:
        """Stream the assistant's next line as text pieces. Closing the generator early stops
        generation within one token. BackendError if the worker dies during this turn."""
        request = {
            "op": "turn",
            "history": _history(history),
            "instructions": options.instructions,
            "temperature": options.temperature,
            "max_output_tokens": options.max_output_tokens,
        }
        async with self._request(request) as turn:
            while not isinstance(item := await self._next(turn), _End):
                yield item

    async def end_of_turn_probability(
        self, history: Sequence[Message], words: str, options: SessionOptions
    ) -> float:
        """P(the caller's line is complete after `words`), from the worker's engine (served
        between replies, in order). BackendError if the worker dies meanwhile."""
        request = {
            "op": "eot",
            "history": _history(history),
            "words": words,
            "instructions": options.instructions,
        }
        async with self._request(request) as turn:
            while not isinstance(item := await self._next(turn), _End):
                pass  # an eot request has no pieces
        if item.value is None:
            raise BackendError(f"{self.engine} answered an end-of-turn request without a value")
        return item.value

    @contextlib.asynccontextmanager
    async def _request(self, request: dict[str, Any]) -> AsyncIterator[_Turn]:
        """A request to the worker for the length of the block: a block left before the
        worker's answer ended tells the worker to stop; the turn is forgotten either way."""
        turn = self._submit(request)
        try:
            yield turn
        finally:
            if not turn.ended:
                await self._stop(turn)
            with self._lock:
                self._turns.pop(turn.id, None)

    @staticmethod
    async def _next(turn: _Turn) -> str | _End:
        """The turn's next piece, or its end (raising the error it ended with)."""
        item = await turn.pieces.get()
        if isinstance(item, _End):
            turn.ended = True
            if item.error is not None:
                raise item.error
        return item

    def _submit(self, request: dict[str, Any]) -> _Turn:
        """Register a request and send it (or keep it for the worker being restarted)."""
        turn = _Turn(next(self._ids), asyncio.get_running_loop(), request)
        request["id"] = turn.id
        request["queued_at"] = time.monotonic()
        with self._lock:
            if self._state == "failed":
                raise BackendUnavailable(f"the language model is unavailable: {self.last_crash}")
            if self._closing:
                raise BackendUnavailable("the language model is shut down")
            self._turns[turn.id] = turn
            if self._worker is not None:
                self._send_locked(turn)
        return turn

    def health(self) -> dict[str, object]:
        """For /healthz: `state` ok (serving), restarting (its worker died; turns wait) or
        failed (it could not be restarted); the turns `generating` (0 or 1) and `waiting`;
        the restarts so far and the last crash."""
        with self._lock:
            worker = self._worker
            return {
                "state": self._state,
                "generating": sum(1 for turn in self._turns.values() if turn.started),
                "waiting": sum(1 for turn in self._turns.values() if not turn.started),
                "pid": worker.process.pid if worker is not None else None,
                "cpu_variant": worker.cpu_variant if worker is not None else None,
                "restarts": self.restarts,
                "last_crash": self.last_crash,
            }

    @property
    def worker_pid(self) -> int | None:
        worker = self._worker
        return worker.process.pid if worker is not None else None

    def close(self) -> None:
        """Stop the worker; turns still open fail. Idempotent."""
        with self._lock:
            self._closing = True
            worker, self._worker = self._worker, None
            turns = list(self._turns.values())
        for turn in turns:
            turn.post(_End(BackendUnavailable("the language model is shut down")))
        if worker is not None:
            _stop_process(worker)
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=CLOSE_TIMEOUT_S)

    # --- the worker ------------------------------------------------------------------------

    def _spawn(self) -> _Worker:
        what = f"the {self.engine} language model worker"
        process, sock = launch("server.model.llm_worker", self.engine, self._worker_options, what=what)
        sock.settimeout(SPAWN_TIMEOUT_S)
        try:
            message = read_message(sock)
        except (EOFError, OSError) as exc:  # died while loading, or never answered
            sock.close()
            raise BackendUnavailable(
                f"{what} {_death(process, exc)} while loading the model; {REBUILD_HINT}"
            ) from exc
        if message.get("op") != "ready":
            sock.close()
            _stop_process(_Worker(process, sock, ""))
            raise BackendUnavailable(f"{what} could not load the model: {message.get('error', message)}")
        sock.settimeout(None)
        log.info(
            "language model worker ready", extra={"pid": process.pid, "cpu_variant": message["cpu_variant"]}
        )
        return _Worker(process, sock, str(message["cpu_variant"]))

    def _send_locked(self, turn: _Turn) -> None:
        """Write the turn's request to the worker (the caller holds `_lock`); a failed write
        means the worker is dying: the reader thread will resend or fail the turn."""
        assert self._worker is not None
        try:
            send_message(self._worker.sock, turn.request)
            turn.sent = True
        except OSError:
            turn.sent = False

    async def _stop(self, turn: _Turn) -> None:
        """Tell the worker to end `turn` and wait (bounded) until it has: the next turn of
        the session must not queue behind a reply nobody listens to."""
        with self._lock:
            worker = self._worker if turn.sent else None
            if worker is not None:
                with contextlib.suppress(OSError):
                    send_message(worker.sock, {"op": "stop", "id": turn.id})
        if worker is None:
            return
        try:
            async with asyncio.timeout(STOP_WAIT_S):
                while not isinstance(await turn.pieces.get(), _End):
                    pass
        except TimeoutError:
            log.warning("language model turn did not stop in time", extra={"turn": turn.id})

    def _read_answers(self) -> None:
        """The reader thread: route answers to turns; restart the worker when it dies."""
        while True:
            worker = self._worker
            if worker is None:
                return
            try:
                while True:
                    self._dispatch(read_message(worker.sock))
            except (EOFError, OSError, ValueError) as exc:
                if self._closing:
                    return
                if not self._restart(worker, exc):
                    return

    def _dispatch(self, message: dict[str, Any]) -> None:
        with self._lock:
            turn = self._turns.get(int(message.get("id", 0)))
        if turn is None:
            return  # a turn whose consumer has gone
        op = message["op"]
        if op == "started":
            turn.started = True
        elif op == "piece":
            turn.post(str(message["text"]))
        elif op == "done":
            if message.get("stats") is not None:
                self.last_stats = self._stats_type(**message["stats"])
                log.debug("language model turn done", extra={"turn": turn.id, **message["stats"]})
            turn.post(_End())
        elif op == "eot":
            turn.post(_End(value=float(message["probability"])))
        elif op == "error":
            turn.post(_End(BackendError(f"{self.engine} generation failed: {message['error']}")))

    def _restart(self, dead: _Worker, cause: BaseException) -> bool:
        """The worker died: fail the turn it was on, start a new one, resend waiting turns.
        Returns False when it could not be restarted (the backend is then failed)."""
        how = _death(dead.process, cause)
        dead.sock.close()
        with self._lock:
            self._state, self._worker = "restarting", None
            self.last_crash = f"the worker (pid {dead.process.pid}) {how}"
            crashed = [t for t in self._turns.values() if t.started]
            for turn in self._turns.values():
                turn.sent = turn.started = False
        log.error("language model worker died; restarting it", extra={"pid": dead.process.pid, "how": how})
        for turn in crashed:
            turn.post(_End(BackendError(f"the language model worker {how} during this reply")))
            with self._lock:
                self._turns.pop(turn.id, None)
        failure: BackendUnavailable | None = None
        for _ in range(RESTART_ATTEMPTS):
            if self._closing:
                return False
            try:
                worker = self._spawn()
            except BackendUnavailable as exc:
                failure = exc
                continue
            with self._lock:
                if self._closing:
                    _stop_process(worker)
                    return False
                self._worker, self._state = worker, "ok"
                self.restarts += 1
                for turn in self._turns.values():
                    self._send_locked(turn)
            return True
        with self._lock:
            self._state = "failed"
            self.last_crash = f"{self.last_crash}; restarting failed: {failure}"
            waiting = list(self._turns.values())
        log.error("language model worker cannot be restarted", extra={"error": str(failure)})
        for turn in waiting:
            turn.post(_End(BackendUnavailable(f"the language model is unavailable: {failure}")))
        return False


def _history(history: Sequence[Message]) -> list[dict[str, object]]:
    return [{"role": m.role, "text": m.text, "interrupted": m.interrupted} for m in history]


def _death(process: subprocess.Popen[bytes], cause: BaseException) -> str:
    """How a worker ended, for a person: 'crashed (SIGSEGV)', 'exited with status 1', ..."""
    try:
        code = process.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
        process.kill()
        return f"stopped answering ({type(cause).__name__}: {cause})"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"crashed ({name})"
    return f"exited with status {code}"


def _stop_process(worker: _Worker) -> None:
    with contextlib.suppress(OSError):
        worker.sock.close()  # the worker sees EOF and returns
    try:
        worker.process.wait(timeout=CLOSE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        worker.process.kill()
        worker.process.wait()
