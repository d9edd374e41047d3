"""ProcessVad: Silero's batches classified in a worker process (the real model, from the
silero-vad package), checked against the same model run in this process."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest

from server.audio import AudioFormatError, PcmFrame
from server.errors import BackendError, BackendUnavailable
from server.http.app import serve_vad
from server.metrics import Metrics
from server.settings import Settings
from server.vad import silero as silero_vad
from server.vad.batch import BatchedVad
from server.vad.process import ProcessVad
from server.vad.silero import SileroVad

pytestmark = pytest.mark.slow

FRAME = 512


@pytest.fixture(scope="module")
def local() -> SileroVad:
    return silero_vad.load()


@pytest.fixture
async def vad(local: SileroVad) -> AsyncIterator[ProcessVad]:
    process_vad = ProcessVad("silero", local)
    await process_vad.start()
    yield process_vad
    await process_vad.close()


def clip(seed: int, seconds: float = 1.0) -> np.ndarray:
    """Noise at a level that differs by seed, with a burst of louder noise in the middle."""
    rng = np.random.default_rng(seed)
    samples = rng.normal(0, 300 * (seed + 1), int(16_000 * seconds))
    samples[4000:9000] *= 20
    return np.clip(samples, -32768, 32767).astype(np.int16)


def frames(samples: np.ndarray) -> list[PcmFrame]:
    return [PcmFrame(samples[i : i + FRAME], 16_000) for i in range(0, len(samples) - FRAME + 1, FRAME)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_sessions_classified_in_the_worker_match_the_model_run_here(
    vad: ProcessVad, local: SileroVad
) -> None:
    clips = [frames(clip(seed)) for seed in range(3)]
    expected = [
        [local_classifier.speech_probability(f) for f in session]
        for session, local_classifier in zip(clips, [local.open(0.5) for _ in clips], strict=True)
    ]
    classifiers = [vad.open(0.5) for _ in clips]

    async def session(i: int) -> list[float]:
        return [await classifiers[i].classify(f) for f in clips[i]]

    got = await asyncio.gather(*(session(i) for i in range(3)))
    for mine, theirs in zip(got, expected, strict=True):
        np.testing.assert_allclose(mine, theirs, atol=1e-4)
    assert vad.frames == sum(len(c) for c in clips)
    assert vad.batches < vad.frames  # the three sessions shared inferences


async def test_a_killed_worker_fails_its_frames_and_is_replaced(vad: ProcessVad, local: SileroVad) -> None:
    classifier = vad.open(0.5)
    session_frames = frames(clip(1))
    assert 0.0 <= await classifier.classify(session_frames[0]) <= 1.0
    old_pid = vad.worker_pid
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    with pytest.raises(BackendError):
        for frame in session_frames[1:]:  # one of these is lost with the worker
            await classifier.classify(frame)
    # a frame sent while the worker restarts waits for the new one; the classifier goes on
    # with fresh state, as a new one would
    fresh = local.open(0.5)
    async with asyncio.timeout(30):
        probability = await classifier.classify(session_frames[0])
    assert probability == pytest.approx(fresh.speech_probability(session_frames[0]), abs=1e-4)
    assert vad.restarts == 1
    assert vad.worker_pid not in (None, old_pid)
    assert vad.health() == {"state": "ok", "pid": vad.worker_pid, "restarts": 1, "sessions": 1}


async def test_close_stops_the_worker_and_refuses_frames(local: SileroVad) -> None:
    vad = ProcessVad("silero", local)
    await vad.start()
    pid = vad.worker_pid
    assert pid is not None and alive(pid)
    classifier = vad.open(0.5)
    await vad.close()
    assert not alive(pid)
    with pytest.raises(BackendError, match="closed"):
        await classifier.classify(frames(clip(0))[0])
    await vad.close()  # idempotent


async def test_a_classifier_garbage_collected_is_forgotten_by_the_worker(vad: ProcessVad) -> None:
    kept = vad.open(0.5)
    dropped = vad.open(0.5)
    dropped_id = dropped.id
    await dropped.classify(frames(clip(0))[0])
    del dropped
    gc.collect()
    # the forget goes out with the next batch: the worker answers it, so it survived the message
    assert 0.0 <= await kept.classify(frames(clip(0))[0]) <= 1.0
    assert dropped_id not in dict(vad._open)


async def test_a_frame_of_the_wrong_size_is_refused_before_it_reaches_the_worker(vad: ProcessVad) -> None:
    classifier = vad.open(0.5)
    with pytest.raises(AudioFormatError):
        await classifier.classify(PcmFrame(np.zeros(320, dtype=np.int16), 16_000))
    assert 0.0 <= await classifier.classify(frames(clip(0))[0]) <= 1.0  # the stream is intact


async def test_a_backend_that_cannot_batch_is_refused_by_the_worker(local: SileroVad) -> None:
    vad = ProcessVad("webrtc", local)
    with pytest.raises(BackendUnavailable, match="cannot classify batches"):
        await vad.start()
    await vad.close()


async def test_the_server_runs_silero_in_a_worker_and_webrtc_inline() -> None:
    metrics = Metrics()
    silero = await serve_vad(Settings(vad="silero"), None, metrics)
    try:
        assert isinstance(silero, ProcessVad)
    finally:
        if isinstance(silero, ProcessVad):
            await silero.close()
    on_loop = await serve_vad(Settings(vad="silero", vad_process=False), None, metrics)
    assert isinstance(on_loop, BatchedVad)
    webrtc = await serve_vad(Settings(vad="webrtc"), None, metrics)
    assert not isinstance(webrtc, (ProcessVad, BatchedVad))


async def test_a_call_survives_its_vad_worker_dying() -> None:
    """The real server (Silero in its worker process, fake models): the worker is killed
    mid-call; the session stays open, keeps reading, and the worker comes back."""
    from server.http.app import create_app
    from server.model.cascade import CascadeModel
    from server.model.fakes import FakeAsr, FakeLlm, FakeTts
    from tests.harness import realtime_client, running_server

    app = create_app(Settings(vad="silero"), model=CascadeModel(FakeAsr(), FakeLlm(), FakeTts()))
    async with running_server(app) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        vad = app.state.runtime.vad
        assert isinstance(vad, ProcessVad)
        await client.stream(PcmFrame.silence(300, 24_000))
        old_pid = vad.worker_pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        await client.stream(PcmFrame.silence(1000, 24_000))
        await client.send({"type": "session.update", "session": {"type": "realtime", "instructions": "x"}})
        await client.wait_for("session.updated")
        assert vad.restarts == 1 and vad.worker_pid not in (None, old_pid)
        assert client.of_type("error") == []
        async with httpx.AsyncClient() as http:
            health = (await http.get(url + "/healthz")).json()
        assert health["status"] == "ok"
        assert health["backends"]["voice activity"]["restarts"] == 1
