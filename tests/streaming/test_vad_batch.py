"""BatchedVad: many sessions' VAD frames classified in shared batches on one worker thread.

The backend here is a FAKE (FakeBatchVad): each frame's "probability" is its first sample /
100, so a result shows which frame it came from, and the fake records every batch it was
given. It can hold its next batch until the test lets it go, which makes "frames that arrive
while a batch runs" deterministic. The real Silero batch is tested in
tests/model/test_vad_backends.py; a whole conversation through the batched path at the end.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from server.model.cascade import CascadeModel
from server.model.fakes import EnergyClassifierFactory, FakeAsr, FakeLlm, FakeTts, tone
from server.settings import Settings
from server.streaming.audio import PcmFrame
from server.streaming.vad import FrameClassifier
from server.streaming.vad_batch import BatchedClassifier, BatchedVad, VadClosed, batched
from tests.harness import realtime_client, running_server


class FakeClassifier:
    frame_ms = 32
    sample_rate_hz = 16_000

    def __init__(self, name: str) -> None:
        self.name = name

    def speech_probability(self, frame: PcmFrame) -> float:
        return float(frame.samples[0]) / 100


class FakeBatchVad:
    """A FAKE batchable VAD backend (see the module docstring)."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, float]]] = []
        self.opened = 0
        self.hold = threading.Event()
        self.hold.set()  # open: batches run at once
        self.entered = threading.Event()  # set when a batch starts
        self.fail_next = False

    def open(self, threshold: float) -> FakeClassifier:
        self.opened += 1
        return FakeClassifier(f"s{self.opened}")

    def speech_probabilities(self, batch: Sequence[tuple[FrameClassifier, PcmFrame]]) -> list[float]:
        self.entered.set()
        assert self.hold.wait(5.0), "the test never released the batch"
        names = [c.name for c, _ in batch]  # type: ignore[attr-defined]
        assert len(set(names)) == len(names), f"a classifier twice in one batch: {names}"
        self.batches.append([(c.name, f.samples[0] / 100) for c, f in batch])  # type: ignore[attr-defined]
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the fake model failed")
        return [float(f.samples[0]) / 100 for _, f in batch]


def frame(value: int) -> PcmFrame:
    return PcmFrame(np.full(512, value, dtype=np.int16), 16_000)


@pytest.fixture
def backend() -> FakeBatchVad:
    return FakeBatchVad()


@pytest.fixture
def vad(backend: FakeBatchVad) -> Iterator[BatchedVad]:
    batched_vad = BatchedVad(backend)
    yield batched_vad
    batched_vad.close()


async def hold_first_batch(backend: FakeBatchVad, classifier: BatchedClassifier) -> asyncio.Task[float]:
    """Start a batch that the fake holds until `backend.hold` is set again."""
    backend.hold.clear()
    backend.entered.clear()
    first = asyncio.create_task(classifier.classify(frame(1)))
    assert await asyncio.to_thread(backend.entered.wait, 5.0)
    return first


async def test_one_session_gets_its_frames_in_order_one_per_batch(
    vad: BatchedVad, backend: FakeBatchVad
) -> None:
    classifier = vad.open(0.5)
    got = [await classifier.classify(frame(v)) for v in (5, 7, 9)]
    assert got == [0.05, 0.07, 0.09]
    assert backend.batches == [[("s1", 0.05)], [("s1", 0.07)], [("s1", 0.09)]]
    assert (vad.batches, vad.frames) == (3, 3)


async def test_frames_waiting_while_a_batch_runs_share_the_next(
    vad: BatchedVad, backend: FakeBatchVad
) -> None:
    a, b, c = vad.open(0.5), vad.open(0.5), vad.open(0.5)
    first = await hold_first_batch(backend, a)
    # while it runs: two more of a's frames (they must stay in order) and one each of b and c
    rest = [asyncio.create_task(cl.classify(frame(v))) for cl, v in ((a, 2), (b, 10), (a, 3), (c, 20))]
    await asyncio.sleep(0.05)  # let every submit reach the queue
    backend.hold.set()
    assert await first == 0.01
    assert await asyncio.gather(*rest) == [0.02, 0.1, 0.03, 0.2]
    assert backend.batches == [
        [("s1", 0.01)],
        [("s1", 0.02), ("s2", 0.1), ("s3", 0.2)],  # a's third frame waits for its second
        [("s1", 0.03)],
    ]


async def test_a_batch_holds_at_most_max_batch_frames(backend: FakeBatchVad) -> None:
    vad = BatchedVad(backend, max_batch=2)
    try:
        classifiers = [vad.open(0.5) for _ in range(6)]
        first = await hold_first_batch(backend, classifiers[0])
        rest = [asyncio.create_task(cl.classify(frame(10 + i))) for i, cl in enumerate(classifiers[1:])]
        await asyncio.sleep(0.05)
        backend.hold.set()
        await first
        assert await asyncio.gather(*rest) == [0.1, 0.11, 0.12, 0.13, 0.14]
        assert [len(b) for b in backend.batches] == [1, 2, 2, 1]
    finally:
        vad.close()


async def test_a_failed_batch_fails_its_frames_and_the_next_batch_works(
    vad: BatchedVad, backend: FakeBatchVad
) -> None:
    classifier = vad.open(0.5)
    backend.fail_next = True
    with pytest.raises(RuntimeError, match="the fake model failed"):
        await classifier.classify(frame(1))
    assert await classifier.classify(frame(2)) == 0.02


async def test_a_cancelled_waiter_does_not_disturb_the_others(vad: BatchedVad, backend: FakeBatchVad) -> None:
    a, b = vad.open(0.5), vad.open(0.5)
    first = await hold_first_batch(backend, a)
    gone = asyncio.create_task(b.classify(frame(50)))
    stays = asyncio.create_task(a.classify(frame(60)))
    await asyncio.sleep(0.05)
    gone.cancel()
    backend.hold.set()
    assert await first == 0.01
    assert await stays == 0.6
    with pytest.raises(asyncio.CancelledError):
        await gone


async def test_close_fails_waiting_frames_and_refuses_new_ones(backend: FakeBatchVad) -> None:
    vad = BatchedVad(backend)
    a, b = vad.open(0.5), vad.open(0.5)
    first = await hold_first_batch(backend, a)
    waiting = asyncio.create_task(b.classify(frame(9)))
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(asyncio.to_thread(vad.close))
    await asyncio.sleep(0.05)
    backend.hold.set()  # the running batch finishes; the waiting frame is not classified
    await closing
    assert await first == 0.01
    with pytest.raises(VadClosed):
        await waiting
    with pytest.raises(VadClosed):
        await a.classify(frame(3))
    assert backend.batches == [[("s1", 0.01)]]
    assert not any(t.name == "voxgate-vad-batch" for t in threading.enumerate())
    vad.close()  # idempotent


async def test_results_go_back_to_each_callers_own_loop(vad: BatchedVad) -> None:
    """Two event loops (the server's and, say, an embedding app's thread) share one VAD."""
    here = vad.open(0.5)

    def other_loop() -> float:
        there = vad.open(0.5)
        return asyncio.run(there.classify(frame(40)))

    other = asyncio.to_thread(other_loop)
    mine = here.classify(frame(30))
    assert await asyncio.gather(mine, other) == [0.3, 0.4]


def test_only_a_backend_that_can_batch_is_wrapped(backend: FakeBatchVad) -> None:
    wrapped = batched(backend)
    assert isinstance(wrapped, BatchedVad)
    assert batched(wrapped) is wrapped
    plain = EnergyClassifierFactory()
    assert batched(plain) is plain
    with pytest.raises(ValueError):
        BatchedVad(backend, max_batch=0)


def test_the_sync_path_still_classifies_one_frame(vad: BatchedVad, backend: FakeBatchVad) -> None:
    assert vad.open(0.5).speech_probability(frame(25)) == 0.25
    assert backend.batches == []  # not batched, and no thread started
    assert not any(t.name == "voxgate-vad-batch" for t in threading.enumerate())


class BatchingEnergyVad(EnergyClassifierFactory):
    """A FAKE batchable VAD: the energy fake, classified frame by frame inside each "batch";
    records the batch sizes so the test can see the batched path was used."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_sizes: list[int] = []

    def speech_probabilities(self, batch: Sequence[tuple[FrameClassifier, PcmFrame]]) -> list[float]:
        self.batch_sizes.append(len(batch))
        return [c.speech_probability(f) for c, f in batch]


async def test_a_conversation_detects_its_turn_through_the_batched_path() -> None:
    from server.app import create_app

    vad = BatchingEnergyVad()
    model = CascadeModel(FakeAsr(["where is my order"]), FakeLlm(["It ships tomorrow."]), FakeTts())
    app = create_app(Settings(), model=model, vad=vad)  # type: ignore[arg-type]
    async with running_server(app) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        await client.stream(PcmFrame.silence(200, 24_000))
        await client.stream(tone(600))
        await client.stream(PcmFrame.silence(600, 24_000))
        started = await client.wait_for("input_audio_buffer.speech_started")
        stopped = await client.wait_for("input_audio_buffer.speech_stopped")
        assert 180 <= started["audio_start_ms"] <= 240
        assert 780 <= stopped["audio_end_ms"] <= 820
        done = await client.wait_for("response.done")
        assert done["response"]["status"] == "completed"
    # 1.4 s of audio in 20 ms energy frames (the last maybe still in the resampler), every
    # one classified through a batch
    assert sum(vad.batch_sizes) >= 69
