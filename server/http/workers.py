"""Worker processes sharing one listening socket: `voxgate serve --workers N`.

The supervisor (the process that ran `voxgate serve`) binds the socket, then keeps N worker
processes running, each started with the spawn method (a fresh interpreter: nothing of the
parent's threads, loops or models is inherited). A worker builds its own app, loads its own
models and serves the shared socket on its own event loop; the kernel hands each new
connection to whichever worker accepts it first. A worker never talks to another: sessions,
admission limits and rate limits are per worker; the only shared state is the metrics
directory (server/metrics.py).

Invariants:
- The supervisor never builds an app or holds a model: what a worker runs is a `WorkerPlan`,
  a module-level function and picklable arguments, called in the worker; startup checks that
  load models run in a process of their own (`check_in_fresh_process`).
- A worker that ends while the supervisor is running is replaced (its live metrics forgotten
  first). One that exits with uvicorn's startup-failure status (its app or models failed to
  start) would fail the same way again: the supervisor stops every worker and returns 2.
  Quick deaths in a row are replaced after a growing delay, so a crash loop does not spin.
- SIGTERM or SIGINT to the supervisor: every worker gets SIGTERM and drains as a single
  process does (server/http/shutdown.py: readiness 503, replies finish, close 1001); the
  supervisor waits for them (bounded by `stop_timeout_s`, then SIGKILL) and returns 0. A
  second signal is passed on as SIGINT, which makes uvicorn stop at once.
- A worker whose supervisor dies (SIGKILL) shuts itself down the same way: it watches its
  parent's process sentinel.

Why not uvicorn's `Multiprocess` supervisor (0.55): its workers run a plain `uvicorn.Server`,
which closes every websocket at once on SIGTERM (no drain), it calls no hook when a worker
dies (the dead worker's live gauges would stay in /metrics), and it restarts a worker that
dies at once in a tight loop.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from multiprocessing.context import SpawnProcess
from pathlib import Path
from types import FrameType
from typing import Any

from uvicorn.config import STARTUP_FAILURE

from server.metrics import MULTIPROCESS_DIR_ENV, forget_worker, fresh_multiprocess_dir

log = logging.getLogger(__name__)

_SPAWN = multiprocessing.get_context("spawn")
_QUICK_DEATH_S = 10.0  # a worker that lived less than this died "quickly"
_FIRST_RESTART_DELAY_S = 0.5  # after the second quick death in a row; doubled each time after
_MAX_RESTART_DELAY_S = 30.0
_KILL_WAIT_S = 5.0  # after SIGKILL, how long to wait for the kernel to reap a worker


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """What every worker runs: `target(sock, *args)`, serving `sock` until SIGTERM.

    `target` must be a module-level function and `args` picklable: they are sent to a fresh
    interpreter (spawn). The target builds the app there and returns when it has shut down."""

    target: Callable[..., None]
    args: tuple[Any, ...] = ()


def check_in_fresh_process(check: Callable[..., str | None], *args: Any) -> str | None:
    """`check(*args)` run in a spawned process (a module-level function, picklable
    arguments), so that what it loads is not kept by this one: its answer (a problem, or
    None), or a problem if that process died."""
    with ProcessPoolExecutor(max_workers=1, mp_context=_SPAWN) as pool:
        try:
            return pool.submit(check, *args).result()
        except BrokenProcessPool:
            return f"the process running {check.__name__} died (a crash while loading?)"


def _exit_with_parent() -> None:
    """In a worker: SIGTERM ourselves (a graceful shutdown) when the supervisor is gone."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="voxgate-parent-watch", daemon=True).start()


def run_worker(plan: WorkerPlan, sock: socket.socket) -> None:
    """The entry point of a worker process (spawned by `Supervisor`)."""
    _exit_with_parent()
    try:
        plan.target(sock, *plan.args)
    except KeyboardInterrupt:  # Ctrl-C reached the whole process group; the parent reports
        pass


def restart_delay_s(quick_deaths: int) -> float:
    """How long to wait before replacing a worker after `quick_deaths` deaths in a row, each
    less than _QUICK_DEATH_S after its start: none for one (a crash, an OOM kill), then 0.5 s
    doubling up to 30 s (a crash loop must not spin the CPU)."""
    if quick_deaths < 2:
        return 0.0
    return min(_MAX_RESTART_DELAY_S, _FIRST_RESTART_DELAY_S * 2.0 ** min(quick_deaths - 2, 16))


@dataclass(slots=True)
class _Slot:
    """One of the N places a worker runs in, and its current process."""

    index: int
    process: SpawnProcess | None = None
    started_s: float = 0.0
    quick_deaths: int = 0
    restart_at_s: float | None = None  # a replacement is due at this time


@dataclass(slots=True)
class Supervisor:
    """Runs `workers` processes of `plan` on `sock` until a signal (see the module docstring).

    Call `run()` once, from the main thread (it installs SIGTERM and SIGINT handlers for its
    duration); it returns the exit status: 0 after a stop, 2 if a worker failed to start. It
    closes `sock` when it stops the workers."""

    plan: WorkerPlan
    sock: socket.socket
    workers: int
    metrics_dir: Path
    stop_timeout_s: float  # from SIGTERM to the workers until they are killed
    _slots: list[_Slot] = field(default_factory=list)
    _signals: list[int] = field(default_factory=list)
    _wake_r: int = -1
    _wake_w: int = -1

    def run(self) -> int:
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, not {self.workers}")
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._slots = [_Slot(i) for i in range(self.workers)]
            for slot in self._slots:
                self._start(slot)
            status = self._supervise()
            self._stop_all()
            return status
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(self._wake_r)
            os.close(self._wake_w)

    def pids(self) -> list[int]:
        """The live workers' process ids (for logs and tests)."""
        return [s.process.pid for s in self._slots if s.process is not None and s.process.pid is not None]

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._signals.append(sig)
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:  # the pipe is full: the loop is awake anyway
            pass

    def _start(self, slot: _Slot) -> None:
        process = _SPAWN.Process(
            target=run_worker, args=(self.plan, self.sock), name=f"voxgate-worker-{slot.index}"
        )
        process.start()
        slot.process, slot.started_s, slot.restart_at_s = process, time.monotonic(), None
        log.info("worker started", extra={"worker": slot.index, "pid": process.pid})

    def _supervise(self) -> int:
        """Replace workers that end, until a signal (0) or a startup failure (2)."""
        while not self._signals:
            now_s = time.monotonic()
            due = [s.restart_at_s for s in self._slots if s.restart_at_s is not None]
            timeout_s = max(0.0, min(due) - now_s) if due else None
            sentinels = [s.process.sentinel for s in self._slots if s.process is not None]
            wait([self._wake_r, *sentinels], timeout_s)
            if self._signals:
                break
            for slot in self._slots:
                if slot.process is not None and not slot.process.is_alive():
                    if self._on_exit(slot) == STARTUP_FAILURE:
                        return 2
                if slot.restart_at_s is not None and time.monotonic() >= slot.restart_at_s:
                    self._start(slot)
        return 0

    def _on_exit(self, slot: _Slot) -> int | None:
        """A worker ended on its own: forget its live metrics, schedule its replacement."""
        assert slot.process is not None
        process, slot.process = slot.process, None
        process.join()
        assert process.pid is not None
        forget_worker(process.pid, self.metrics_dir)
        code = process.exitcode
        if code == STARTUP_FAILURE:
            log.error(
                "worker failed to start (its log is above): stopping",
                extra={"worker": slot.index, "pid": process.pid},
            )
            return code
        lived_s = time.monotonic() - slot.started_s
        slot.quick_deaths = slot.quick_deaths + 1 if lived_s < _QUICK_DEATH_S else 0
        delay_s = restart_delay_s(slot.quick_deaths)
        log.warning(
            "worker ended: replacing it",
            extra={
                "worker": slot.index,
                "pid": process.pid,
                "exit_code": code,
                "lived_s": round(lived_s, 1),
                "restart_delay_s": delay_s,
            },
        )
        slot.restart_at_s = time.monotonic() + delay_s
        return code

    def _signal_workers(self, sig: int) -> None:
        for slot in self._slots:
            if slot.process is not None and slot.process.pid is not None and slot.process.is_alive():
                try:
                    os.kill(slot.process.pid, sig)
                except ProcessLookupError:  # it ended meanwhile
                    pass

    def _stop_all(self) -> None:
        """SIGTERM every worker and wait for them; a second signal meanwhile: SIGINT (uvicorn
        stops at once); past `stop_timeout_s`: SIGKILL."""
        seen = len(self._signals)
        log.info("stopping workers", extra={"workers": len(self.pids()), "timeout_s": self.stop_timeout_s})
        # our copy of the listening socket would keep it open (the kernel would still queue new
        # connections that nobody accepts) after the workers close theirs when they drain
        self.sock.close()
        self._signal_workers(signal.SIGTERM)
        deadline_s = time.monotonic() + self.stop_timeout_s
        while True:
            running = [s.process for s in self._slots if s.process is not None and s.process.is_alive()]
            remaining_s = deadline_s - time.monotonic()
            if not running or remaining_s <= 0:
                break
            wait([self._wake_r, *(p.sentinel for p in running)], remaining_s)
            if len(self._signals) > seen:  # asked again: stop now
                seen = len(self._signals)
                self._signal_workers(signal.SIGINT)
            with_data = True
            while with_data:  # empty the wake-up pipe
                try:
                    with_data = bool(os.read(self._wake_r, 512))
                except BlockingIOError:
                    with_data = False
        for slot in self._slots:
            process = slot.process
            if process is None:
                continue
            if process.is_alive():
                log.error("worker did not stop in time: killing it", extra={"pid": process.pid})
                process.kill()
            process.join(_KILL_WAIT_S)
            if process.pid is not None:
                forget_worker(process.pid, self.metrics_dir)
            slot.process = None


def serve_with_workers(plan: WorkerPlan, sock: socket.socket, workers: int, stop_timeout_s: float) -> int:
    """Run `workers` processes of `plan` on `sock` until SIGTERM or SIGINT; the exit status.

    Their metrics directory is PROMETHEUS_MULTIPROC_DIR if set (emptied first), else a new
    temporary directory, removed afterwards. It is set in this process's environment before
    the first worker starts, so every worker (a child) inherits it."""
    given = os.environ.get(MULTIPROCESS_DIR_ENV)
    metrics_dir = Path(given) if given else Path(tempfile.mkdtemp(prefix="voxgate-metrics-"))
    fresh_multiprocess_dir(metrics_dir)
    os.environ[MULTIPROCESS_DIR_ENV] = str(metrics_dir)
    try:
        return Supervisor(plan, sock, workers, metrics_dir, stop_timeout_s).run()
    finally:
        if not given:
            shutil.rmtree(metrics_dir, ignore_errors=True)
