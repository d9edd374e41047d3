"""BatchedVad: many sessions' VAD frames classified in shared batches, one per loop iteration.

The backend here is a FAKE (FakeBatchVad): each frame's "probability" is its first sample /
100, so a result shows which frame it came from, and the fake records every batch it was
given. The real Silero batch is tested in tests/vad/test_backends.py; a whole
conversation through the batched path at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx
import numpy as np
import pytest

from server.audio import PcmFrame
from server.model.cascade import CascadeModel
from server.model.fakes import EnergyClassifierFactory, FakeAsr, FakeLlm, FakeTts
from server.settings import Settings
from server.vad.batch import BatchedVad, batched
from server.vad.detector import FrameClassifier
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
        self.fail_next = False

    def open(self, threshold: float) -> FakeClassifier:
        self.opened += 1
        return FakeClassifier(f"s{self.opened}")

    def speech_probabilities(self, batch: Sequence[tuple[FrameClassifier, PcmFrame]]) -> list[float]:
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
def vad(backend: FakeBatchVad) -> BatchedVad:
    return BatchedVad(backend)


async def test_one_session_gets_its_frames_in_order_one_per_batch(
    vad: BatchedVad, backend: FakeBatchVad
) -> None:
    classifier = vad.open(0.5)
    got = [await classifier.classify(frame(v)) for v in (5, 7, 9)]
    assert got == [0.05, 0.07, 0.09]
    assert backend.batches == [[("s1", 0.05)], [("s1", 0.07)], [("s1", 0.09)]]
    assert (vad.batches, vad.frames) == (3, 3)


async def test_frames_of_one_loop_iteration_share_a_batch(vad: BatchedVad, backend: FakeBatchVad) -> None:
    a, b, c = vad.open(0.5), vad.open(0.5), vad.open(0.5)
    # submitted in one iteration: a's two frames must stay in order, in two batches
    futures = [vad.submit(cl.inner, frame(v)) for cl, v in ((a, 1), (b, 10), (a, 2), (c, 20))]
    assert await asyncio.gather(*futures) == [0.01, 0.1, 0.02, 0.2]
    assert backend.batches == [
        [("s1", 0.01), ("s2", 0.1), ("s3", 0.2)],  # a's second frame waits for its first
        [("s1", 0.02)],
    ]


async def test_sessions_woken_together_are_classified_together(
    vad: BatchedVad, backend: FakeBatchVad
) -> None:
    """Tasks that become ready in the same iteration (as sessions do when a burst of network
    reads arrives) submit before the flush runs."""
    classifiers = [vad.open(0.5) for _ in range(5)]
    go = asyncio.Event()

    async def session(i: int) -> float:
        await go.wait()
        return await classifiers[i].classify(frame(10 + i))

    tasks = [asyncio.create_task(session(i)) for i in range(5)]
    await asyncio.sleep(0)
    go.set()
    assert await asyncio.gather(*tasks) == [0.1, 0.11, 0.12, 0.13, 0.14]
    assert [len(b) for b in backend.batches] == [5]


async def test_a_batch_holds_at_most_max_batch_frames(backend: FakeBatchVad) -> None:
    vad = BatchedVad(backend, max_batch=2)
    classifiers = [vad.open(0.5) for _ in range(5)]
    futures = [vad.submit(cl.inner, frame(10 + i)) for i, cl in enumerate(classifiers)]
    assert await asyncio.gather(*futures) == [0.1, 0.11, 0.12, 0.13, 0.14]
    assert [len(b) for b in backend.batches] == [2, 2, 1]


async def test_a_failed_batch_fails_its_frames_and_the_next_batch_works(
    vad: BatchedVad, backend: FakeBatchVad
) -> None:
    a, b = vad.open(0.5), vad.open(0.5)
    backend.fail_next = True
    failed = await asyncio.gather(a.classify(frame(1)), b.classify(frame(2)), return_exceptions=True)
    assert [str(e) for e in failed] == ["the fake model failed"] * 2
    assert await a.classify(frame(3)) == 0.03


async def test_a_cancelled_frame_is_not_classified_and_does_not_disturb_the_others(
    vad: BatchedVad, backend: FakeBatchVad
) -> None:
    a, b = vad.open(0.5), vad.open(0.5)
    gone = asyncio.create_task(b.classify(frame(50)))
    stays = asyncio.create_task(a.classify(frame(60)))
    await asyncio.sleep(0)  # both submitted; the flush runs next iteration
    gone.cancel()
    assert await stays == 0.6
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert backend.batches == [[("s1", 0.6)]]


async def test_each_event_loop_batches_its_own_frames(vad: BatchedVad, backend: FakeBatchVad) -> None:
    """Two event loops (the server's and, say, an embedding app's thread) share one VAD."""
    here = vad.open(0.5)

    def other_loop() -> float:
        there = vad.open(0.5)
        return asyncio.run(there.classify(frame(40)))

    other = asyncio.to_thread(other_loop)
    mine = here.classify(frame(30))
    assert sorted(await asyncio.gather(mine, other)) == [0.3, 0.4]
    assert sorted(len(b) for b in backend.batches) == [1, 1]


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
    assert backend.batches == []  # not batched


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
    from server.http.app import create_app

    vad = BatchingEnergyVad()
    model = CascadeModel(FakeAsr(["where is my order"]), FakeLlm(["It ships tomorrow."]), FakeTts())
    app = create_app(Settings(), model=model, vad=vad)
    async with running_server(app) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        await client.speak_tone_turn()
        done = await client.wait_for("response.done")
        assert done["response"]["status"] == "completed"
        async with httpx.AsyncClient(base_url=url) as http:
            metrics = (await http.get("/metrics")).text
    # 1.4 s of audio in 20 ms energy frames (the last maybe still in the resampler), every
    # one classified through a batch, and each batch in the server's histogram
    assert sum(vad.batch_sizes) >= 69
    sum_line = next(line for line in metrics.splitlines() if line.startswith("voxgate_vad_batch_frames_sum"))
    assert float(sum_line.split()[-1]) >= 69
