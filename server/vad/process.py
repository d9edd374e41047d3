"""A batching VAD (Silero) run in a worker process: the event loop only packs and unpacks bytes.

Batches form as in `server.vad.batch` (one per event-loop iteration, at most one frame per session,
nothing waits to fill one), but each is written to `server.vad.worker` over a socket
pair instead of run on the loop; the answers come back in order and resolve each session's
future. Batches are pipelined: a new one is sent without waiting for the last answer (the
worker keeps every session's frames in order). So the inference runs on another core, and
no thread of this process competes with the loop for the GIL.

If the worker dies, the frames it held fail with BackendError (those sessions end as a
backend failure would end them), it is started again, and the classifiers still open are
reopened there with fresh state. Frames that arrive meanwhile wait for it.

Order of calls:

    vad = ProcessVad("silero", silero.load())       # the local backend: frame sizes, thresholds
    await vad.start()                               # spawns the worker; BackendUnavailable if not
    classifier = vad.open(threshold)                # per session
    p = await classifier.classify(frame)            # each VAD frame, in order
    await vad.close()                               # at shutdown
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import struct
import subprocess
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np

from server.audio import AudioFormatError, PcmFrame
from server.errors import BackendError, BackendUnavailable
from server.model.worker_process import launch
from server.vad.batch import WaitingFrame, take_batch
from server.vad.detector import ClassifierFactory, QueuedClassifier
from server.vad.worker import BATCH, FAILED, FORGET, HEADER, OPEN, OPEN_KIND, PROBABILITIES, READY

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH: Final = 64
SPAWN_TIMEOUT_S: Final = 30.0  # interpreter start + model load, on a busy 2-core box
STOP_TIMEOUT_S: Final = 2.0
RESTART_ATTEMPTS: Final = 3
_ID: Final = struct.Struct("<I")


@dataclass(slots=True)
class _Worker:
    process: subprocess.Popen[bytes]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


class ProcessVad:
    """A ClassifierFactory whose classifiers' frames are classified in a worker process."""

    def __init__(
        self,
        backend: str,
        local: ClassifierFactory,
        max_batch: int = DEFAULT_MAX_BATCH,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        """`backend`: the VAD registry name the worker loads. `local`: the same backend loaded
        here, asked only for frame sizes and threshold checks. `on_batch(frames)` is called
        per batch sent (a metric)."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, not {max_batch}")
        self.backend = backend
        self._local = local
        self.max_batch = max_batch
        self._on_batch = on_batch
        self._ids = itertools.count(1)
        self._open: weakref.WeakValueDictionary[int, RemoteClassifier] = weakref.WeakValueDictionary()
        self._control: list[bytes] = []  # opens and forgets, sent before the next batch
        self._waiting: deque[WaitingFrame[int]] = deque()
        self._in_flight: deque[list[asyncio.Future[float]]] = deque()
        self._worker: _Worker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._flush_scheduled = False
        self._closed = False
        self._broken: BackendError | None = None  # the worker could not be restarted
        self.batches = 0
        self.frames = 0
        self.restarts = 0

    def health(self) -> dict[str, object]:
        """For /healthz, as the language model's: `state` ok, restarting (the worker died; its
        frames counted as silence) or failed (it could not be restarted: sessions end)."""
        state = "failed" if self._broken is not None else "restarting" if self._worker is None else "ok"
        return {
            "state": state,
            "pid": self.worker_pid,
            "restarts": self.restarts,
            "sessions": len(self._open),
        }

    @property
    def worker_pid(self) -> int | None:
        return self._worker.process.pid if self._worker is not None else None

    async def start(self) -> None:
        """Spawn the worker and wait until its model is loaded; BackendUnavailable if it
        cannot start (the caller may fall back to classifying in this process)."""
        self._loop = asyncio.get_running_loop()
        self._worker = await self._spawn()
        self._reader_task = asyncio.create_task(self._read_answers(), name="vad-worker-reader")

    def open(self, threshold: float) -> RemoteClassifier:
        probe = self._local.open(threshold)  # checks the threshold; gives the frame size
        classifier = RemoteClassifier(self, next(self._ids), threshold, probe.frame_ms, probe.sample_rate_hz)
        self._open[classifier.id] = classifier
        self._control.append(OPEN.pack(OPEN_KIND, classifier.id, threshold))
        weakref.finalize(classifier, self._forget, classifier.id)
        return classifier

    def submit(self, classifier_id: int, frame: PcmFrame) -> asyncio.Future[float]:
        if self._broken is not None:
            raise self._broken
        if self._closed:
            raise BackendError("the voice activity detector is closed")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            raise RuntimeError("ProcessVad serves the event loop that started it")
        future: asyncio.Future[float] = loop.create_future()
        self._waiting.append(WaitingFrame(classifier_id, frame, future))
        self._schedule_flush()
        return future

    async def close(self) -> None:
        """Stop the worker; frames still waiting or in flight fail. Idempotent."""
        self._closed = True
        task, self._reader_task = self._reader_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_all(BackendError("the voice activity detector is closed"))
        worker, self._worker = self._worker, None
        if worker is not None:
            await asyncio.to_thread(_stop, worker)

    # --- internals -------------------------------------------------------------------------

    def _forget(self, classifier_id: int) -> None:
        """The classifier was garbage collected (its session ended): drop its worker state.
        May run on any thread (a finalizer), so it only hands the work to the loop."""
        loop = self._loop
        if loop is None or self._closed:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the worker goes with it
            loop.call_soon_threadsafe(self._queue_forget, classifier_id)

    def _queue_forget(self, classifier_id: int) -> None:
        self._control.append(HEADER.pack(FORGET, classifier_id))
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        worker = self._worker
        if worker is None or self._closed:
            return  # restarting: everything waits for the new worker
        batch = take_batch(self._waiting, self.max_batch)
        if self._waiting:
            self._schedule_flush()  # a session's later frame, or more than max_batch
        if not batch and not self._control:
            return
        parts = self._control
        self._control = []
        if batch:
            parts.append(HEADER.pack(BATCH, len(batch)))
            for waiting in batch:
                parts.append(_ID.pack(waiting.key))
                parts.append(waiting.frame.samples.astype("<i2", copy=False).tobytes())
            self._in_flight.append([waiting.future for waiting in batch])
            self.batches += 1
            self.frames += len(batch)
            if self._on_batch is not None:
                self._on_batch(len(batch))
        worker.writer.write(b"".join(parts))

    async def _read_answers(self) -> None:
        while not self._closed:
            worker = self._worker
            assert worker is not None
            try:
                while True:
                    kind, count = HEADER.unpack(await worker.reader.readexactly(HEADER.size))
                    if kind == FAILED:
                        text = (await worker.reader.readexactly(count)).decode("utf-8", "replace")
                        raise BackendError(f"the voice activity worker failed: {text}", retryable=True)
                    if kind != PROBABILITIES:
                        raise BackendError(f"the voice activity worker sent {kind!r}", retryable=True)
                    values = np.frombuffer(await worker.reader.readexactly(4 * count), dtype="<f4")
                    futures = self._in_flight.popleft() if self._in_flight else []
                    if len(futures) != count:
                        raise BackendError(
                            "the voice activity worker answered a batch it was not sent", retryable=True
                        )
                    for future, value in zip(futures, values, strict=True):
                        if not future.done():
                            future.set_result(float(value))
            except (asyncio.IncompleteReadError, ConnectionError, BackendError) as exc:
                if self._closed:
                    return
                error = (
                    exc
                    if isinstance(exc, BackendError)
                    else BackendError("the voice activity worker exited", retryable=True)
                )
                log.error("voice activity worker lost; restarting it", extra={"error": str(error)})
                await self._restart(error)

    async def _restart(self, error: BackendError) -> None:
        """Fail what the dead worker held, start a new one, reopen the live classifiers."""
        worker, self._worker = self._worker, None
        self._fail_in_flight(error)
        self._control = []  # the new worker gets fresh opens below
        if worker is not None:
            await asyncio.to_thread(_stop, worker)
        for attempt in range(RESTART_ATTEMPTS):
            try:
                new_worker = await self._spawn()
                break
            except BackendUnavailable as exc:
                log.error(
                    "voice activity worker did not restart", extra={"attempt": attempt + 1, "error": str(exc)}
                )
                await asyncio.sleep(0.5 * (attempt + 1))
        else:
            self._broken = BackendError("the voice activity worker cannot be restarted")
            self._fail_all(self._broken)
            self._closed = True
            return
        self.restarts += 1
        self._control = [OPEN.pack(OPEN_KIND, c.id, c.threshold) for c in list(self._open.values())]
        self._worker = new_worker
        self._schedule_flush()

    def _fail_in_flight(self, error: BackendError) -> None:
        """The frames sent to a worker that will not answer them."""
        for futures in self._in_flight:
            for future in futures:
                if not future.done():
                    future.set_exception(error)
        self._in_flight.clear()

    def _fail_all(self, error: BackendError) -> None:
        self._fail_in_flight(error)
        while self._waiting:
            waiting = self._waiting.popleft()
            if not waiting.future.done():
                waiting.future.set_exception(error)

    async def _spawn(self) -> _Worker:
        process, parent_sock = await asyncio.to_thread(
            launch, "server.vad.worker", self.backend, what="the voice activity worker"
        )
        reader, writer = await asyncio.open_connection(sock=parent_sock)
        worker = _Worker(process, reader, writer)
        try:
            async with asyncio.timeout(SPAWN_TIMEOUT_S):
                kind, value = HEADER.unpack(await reader.readexactly(HEADER.size))
                if kind == FAILED:
                    text = (await reader.readexactly(value)).decode("utf-8", "replace")
                    raise BackendUnavailable(
                        f"the voice activity worker could not load {self.backend!r}: {text}"
                    )
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
            await asyncio.to_thread(_stop, worker)
            raise BackendUnavailable(f"the voice activity worker did not start: {exc!r}") from exc
        except BackendUnavailable:
            await asyncio.to_thread(_stop, worker)
            raise
        if kind != READY:
            await asyncio.to_thread(_stop, worker)
            raise BackendUnavailable(f"the voice activity worker sent {kind!r} instead of ready")
        return worker


def _stop(worker: _Worker) -> None:
    """Close our end (the worker exits on EOF); kill it if it does not."""
    worker.writer.close()
    try:
        worker.process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        worker.process.kill()
        worker.process.wait(STOP_TIMEOUT_S)


class RemoteClassifier(QueuedClassifier):
    """One session's classifier; its state lives in the worker process."""

    def __init__(
        self, vad: ProcessVad, classifier_id: int, threshold: float, frame_ms: int, rate_hz: int
    ) -> None:
        self._vad = vad
        self.id = classifier_id
        self.threshold = threshold
        self.frame_ms = frame_ms
        self.sample_rate_hz = rate_hz

    async def classify(self, frame: PcmFrame) -> float:
        expected = self.sample_rate_hz * self.frame_ms // 1000
        if frame.sample_rate_hz != self.sample_rate_hz or frame.sample_count != expected:
            raise AudioFormatError(
                f"this VAD needs {expected} samples at {self.sample_rate_hz} Hz, got "
                f"{frame.sample_count} at {frame.sample_rate_hz} Hz"
            )
        return await self._vad.submit(self.id, frame)

    def speech_probability(self, frame: PcmFrame) -> float:
        raise RuntimeError("this classifier runs in the VAD worker process: await classify()")
