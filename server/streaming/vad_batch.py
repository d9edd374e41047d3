"""Classifying many sessions' VAD frames together: one inference per batch, on one thread.

Silero's ONNX model costs ≈0.23 ms for one 32 ms frame but ≈3.6 ms for 50 (72 µs each): a
call's fixed cost dominates. Called per frame on the event loop, 50 sessions kept a third of a
core busy there and the loop fell behind (BENCHMARKS.md). Moving each frame to a worker thread
on its own was worse still: a thread hop per frame costs more than the inference it moves.

So every session's frame goes into one queue, and one worker thread takes all that is queued
(at most one frame per session, each session's frames in order, up to `max_batch`), runs one
inference (onnxruntime releases the GIL), and hands each result back to its session's event
loop, once per loop per batch. Nothing waits to fill a batch: a frame that arrives while the
worker is idle is classified at once, alone; frames that arrive while a batch runs form the
next one. One session pays a thread hop (tens of µs); N sessions share a few inferences per
frame period instead of N.

Order of calls:

    vad = BatchedVad(silero_vad.load())      # once per process; starts no thread yet
    classifier = vad.open(threshold)         # per session
    p = await classifier.classify(frame)     # each VAD frame, in order, from a coroutine
    vad.close()                              # at shutdown: the worker stops, waiting frames fail
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from dataclasses import dataclass
from typing import Final

from server.streaming.audio import PcmFrame
from server.streaming.vad import BatchableVad, ClassifierFactory, FrameClassifier

DEFAULT_MAX_BATCH: Final = 64
_JOIN_TIMEOUT_S: Final = 2.0


class VadClosed(RuntimeError):
    """The batched VAD was closed; no more frames are classified."""


@dataclass(slots=True)
class _Waiting:
    classifier: FrameClassifier
    frame: PcmFrame
    future: asyncio.Future[float]
    loop: asyncio.AbstractEventLoop


def _settle(results: list[tuple[asyncio.Future[float], float | BaseException]]) -> None:
    """On the session's loop: resolve the futures of one batch (skipping cancelled ones)."""
    for future, result in results:
        if future.done():
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


class BatchedVad:
    """A ClassifierFactory over a `BatchableVad` whose classifiers' frames are classified in
    shared batches on one worker thread (started at the first frame)."""

    def __init__(self, inner: BatchableVad, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, not {max_batch}")
        self.inner = inner
        self.max_batch = max_batch
        self._waiting: deque[_Waiting] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._worker: threading.Thread | None = None
        self.batches = 0  # inferences run, and frames classified by them: for benchmarks and tests
        self.frames = 0

    def open(self, threshold: float) -> BatchedClassifier:
        return BatchedClassifier(self, self.inner.open(threshold))

    def close(self) -> None:
        """Stop the worker (after the batch it is running); frames still waiting fail with
        VadClosed. Idempotent."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
            worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(_JOIN_TIMEOUT_S)

    def submit(self, classifier: FrameClassifier, frame: PcmFrame) -> asyncio.Future[float]:
        """Queue the next frame of `classifier` (opened by `inner`); the future resolves on the
        calling loop with its probability, or the backend's exception."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[float] = loop.create_future()
        with self._ready:
            if self._closed:
                raise VadClosed("the voice activity detector is closed")
            self._waiting.append(_Waiting(classifier, frame, future, loop))
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="voxgate-vad-batch", daemon=True)
                self._worker.start()
            self._ready.notify()
        return future

    def _next_batch(self) -> list[_Waiting]:
        """Under the lock: the oldest frame of each classifier, oldest first, up to max_batch."""
        batch: list[_Waiting] = []
        later: deque[_Waiting] = deque()
        in_batch: set[int] = set()
        while self._waiting and len(batch) < self.max_batch:
            waiting = self._waiting.popleft()
            if id(waiting.classifier) in in_batch:
                later.append(waiting)  # its state depends on the frame before it
            else:
                in_batch.add(id(waiting.classifier))
                batch.append(waiting)
        later.extend(self._waiting)
        self._waiting = later
        return batch

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._waiting and not self._closed:
                    self._ready.wait()
                if self._closed:
                    abandoned = list(self._waiting)
                    self._waiting.clear()
                    break
                batch = self._next_batch()
            results: list[float | BaseException]
            try:
                results = list(self.inner.speech_probabilities([(w.classifier, w.frame) for w in batch]))
                if len(results) != len(batch):
                    raise RuntimeError(
                        f"the VAD returned {len(results)} probabilities for {len(batch)} frames"
                    )
            except Exception as exc:  # delivered to every session of the batch, like a sync call would raise
                results = [exc] * len(batch)
            self.batches += 1
            self.frames += len(batch)
            self._deliver(batch, results)
        closed = VadClosed("the voice activity detector was closed")
        self._deliver(abandoned, [closed] * len(abandoned))

    @staticmethod
    def _deliver(batch: list[_Waiting], results: list[float | BaseException]) -> None:
        by_loop: dict[
            asyncio.AbstractEventLoop, list[tuple[asyncio.Future[float], float | BaseException]]
        ] = {}
        for waiting, result in zip(batch, results, strict=True):
            by_loop.setdefault(waiting.loop, []).append((waiting.future, result))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
                loop.call_soon_threadsafe(_settle, settled)


class BatchedClassifier:
    """One session's classifier (a FrameClassifier) whose frames go through its BatchedVad."""

    def __init__(self, vad: BatchedVad, inner: FrameClassifier) -> None:
        self._vad = vad
        self.inner = inner
        self.frame_ms = inner.frame_ms
        self.sample_rate_hz = inner.sample_rate_hz

    async def classify(self, frame: PcmFrame) -> float:
        """The next frame's speech probability, classified in a shared batch. Await each frame
        before the next is classified: frames of one classifier must not overlap."""
        return await self._vad.submit(self.inner, frame)

    def speech_probability(self, frame: PcmFrame) -> float:
        """Synchronously, on the caller's thread (not batched); never while a `classify` of
        this classifier is pending."""
        return self.inner.speech_probability(frame)


def batched(factory: ClassifierFactory) -> ClassifierFactory:
    """`factory` wrapped in a BatchedVad if its backend can batch, else unchanged."""
    if isinstance(factory, BatchableVad) and not isinstance(factory, BatchedVad):
        return BatchedVad(factory)
    return factory
