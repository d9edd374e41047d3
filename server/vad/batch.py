"""Classifying many sessions' VAD frames together: one inference per batch.

Silero's ONNX model costs ≈0.23 ms for one 32 ms frame, ≈0.6 ms for 8 and ≈3.6 ms for 50:
a call's fixed cost dominates. Called per frame, 50 sessions kept a third of a core busy on
the event loop and it fell behind (BENCHMARKS.md).

Here a session's frame joins the batch of the loop iteration it arrives in: the first frame
schedules a flush with `call_soon`, which runs after every callback already ready in that
iteration, so every session woken by the same burst of network reads shares one inference.
Nothing waits to fill a batch: one session's frame is classified in the same iteration it
arrived in. A batch holds at most one frame per session (its recurrent state is sequential)
and at most `max_batch`; what is left goes in the next flush.

Tried first and dropped: batches on a worker thread, off the loop. The inference itself
releases the GIL, but the worker needs the GIL to build each batch and hand results back, and
a thread asking for the GIL while the busy event loop holds it waits up to the interpreter's
switch interval (5 ms). At 50 sessions (loadtests/gateway_overhead.py, one run each on a quiet
box) the gateway added p50 28 / p99 143 ms that way, against 12 / 59 (median of 4 runs) with
batches on the loop; a 1 ms switch interval brought the thread to 10 / 61, no better, at the
price of a process-wide setting. A thread hop per frame, without batching, was worse still.

Order of calls:

    vad = BatchedVad(silero.load())          # once per process
    classifier = vad.open(threshold)         # per session
    p = await classifier.classify(frame)     # each VAD frame, in order, from a coroutine
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from server.audio import PcmFrame
from server.vad.detector import BatchableVad, ClassifierFactory, FrameClassifier, QueuedClassifier

DEFAULT_MAX_BATCH: Final = 64
K = TypeVar("K")  # hashable: the classifier itself, or its id


@dataclass(slots=True)
class WaitingFrame(Generic[K]):
    """A session's frame waiting for a batch; `key` names its classifier (the classifier, or
    its id in a worker process)."""

    key: K
    frame: PcmFrame
    future: asyncio.Future[float]


def take_batch(waiting: deque[WaitingFrame[K]], max_batch: int) -> list[WaitingFrame[K]]:
    """Remove and return the next batch from `waiting`: the oldest frame of each classifier,
    oldest first, up to `max_batch`. A classifier's later frames stay, in order (its state
    depends on the frame before); frames whose future is done (a cancelled session) are dropped."""
    batch: list[WaitingFrame[K]] = []
    later: list[WaitingFrame[K]] = []
    in_batch: set[K] = set()
    while waiting and len(batch) < max_batch:
        item = waiting.popleft()
        if item.future.done():
            continue
        if item.key in in_batch:
            later.append(item)
        else:
            in_batch.add(item.key)
            batch.append(item)
    waiting.extendleft(reversed(later))
    return batch


@dataclass(slots=True)
class _LoopQueue:
    """The frames waiting on one event loop, and whether a flush is scheduled there."""

    waiting: deque[WaitingFrame[FrameClassifier]] = field(default_factory=deque)
    flush_scheduled: bool = False


class BatchedVad:
    """A ClassifierFactory over a `BatchableVad` whose classifiers' frames are classified in
    shared batches, one per event-loop iteration (see the module docstring)."""

    def __init__(
        self,
        inner: BatchableVad,
        max_batch: int = DEFAULT_MAX_BATCH,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        """`on_batch(frames)` is called after each inference (a metric)."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, not {max_batch}")
        self.inner = inner
        self.max_batch = max_batch
        self._on_batch = on_batch
        self._queues: dict[asyncio.AbstractEventLoop, _LoopQueue] = {}
        self._inference = threading.Lock()  # the backend runs one batch at a time, whatever the loop
        self.batches = 0  # inferences run, and frames classified by them: for benchmarks and tests
        self.frames = 0

    def open(self, threshold: float) -> BatchedClassifier:
        return BatchedClassifier(self, self.inner.open(threshold))

    def submit(self, classifier: FrameClassifier, frame: PcmFrame) -> asyncio.Future[float]:
        """Queue the next frame of `classifier` (opened by `inner`); the future resolves with
        its probability, or the backend's exception, in this loop iteration's flush."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[float] = loop.create_future()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _LoopQueue()
        queue.waiting.append(WaitingFrame(classifier, frame, future))
        if not queue.flush_scheduled:
            queue.flush_scheduled = True
            loop.call_soon(self._flush, loop, queue)
        return future

    def _flush(self, loop: asyncio.AbstractEventLoop, queue: _LoopQueue) -> None:
        queue.flush_scheduled = False
        batch = take_batch(queue.waiting, self.max_batch)
        if queue.waiting:  # a session's later frame, or more than max_batch: the next iteration
            queue.flush_scheduled = True
            loop.call_soon(self._flush, loop, queue)
        else:
            self._queues.pop(loop, None)  # nothing left: a loop that ends leaves nothing behind
        if not batch:
            return
        results: list[float | BaseException]
        try:
            with self._inference:
                results = list(self.inner.speech_probabilities([(w.key, w.frame) for w in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"the VAD returned {len(results)} probabilities for {len(batch)} frames")
        except Exception as exc:  # every session of the batch gets it, as a per-frame call would raise
            results = [exc] * len(batch)
        self.batches += 1
        self.frames += len(batch)
        if self._on_batch is not None:
            self._on_batch(len(batch))
        for waiting, result in zip(batch, results, strict=True):
            if waiting.future.done():  # its session was cancelled
                continue
            if isinstance(result, BaseException):
                waiting.future.set_exception(result)
            else:
                waiting.future.set_result(result)


class BatchedClassifier(QueuedClassifier):
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


def batched(factory: ClassifierFactory, on_batch: Callable[[int], None] | None = None) -> ClassifierFactory:
    """`factory` wrapped in a BatchedVad if its backend can batch, else unchanged."""
    if isinstance(factory, BatchableVad):
        return BatchedVad(factory, on_batch=on_batch)
    return factory
