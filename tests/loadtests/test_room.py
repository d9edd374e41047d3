"""The room's arithmetic: the player queue, the echo's delay and level, the reverberation's decay,
the background noise's level, and the microphone mixing it all into its frames."""

from __future__ import annotations

import base64
import json
import math

import numpy as np
import pytest

from loadtests.corpus import SAMPLE_RATE_HZ
from loadtests.microphone import Microphone
from loadtests.room import (
    BackgroundNoise,
    EchoOptions,
    EchoPath,
    Room,
    RoomOptions,
    rms_dbfs,
    room_impulse_response,
)

RATE = SAMPLE_RATE_HZ
FRAME = RATE // 50  # 20 ms


def pull_all(path: EchoPath, frames: int, origin_s: float = 0.0) -> np.ndarray:
    return np.concatenate([path.pull(origin_s + k * 0.02, FRAME) for k in range(frames)])


def test_an_impulse_comes_back_after_the_delay_at_the_level() -> None:
    path = EchoPath(EchoOptions(delay_ms=50, level_db=-6, rt60_s=0), origin_s=10.0)
    impulse = np.zeros(480, dtype=np.int16)
    impulse[0] = 10_000
    assert path.push_reply(impulse, arrival_s=10.1) == round(0.1 * RATE)  # plays as it arrives
    heard = pull_all(path, 20, origin_s=10.0)
    assert np.flatnonzero(heard).tolist() == [round(0.15 * RATE)]
    assert heard[round(0.15 * RATE)] == pytest.approx(10_000 * 10 ** (-6 / 20))


def test_the_player_queues_chunks_that_arrive_together_and_waits_for_late_ones() -> None:
    path = EchoPath(EchoOptions(delay_ms=0, level_db=0, rt60_s=0), origin_s=0.0)
    chunk = np.full(480, 1000, dtype=np.int16)
    assert path.push_reply(chunk, 0.0) == 0
    assert path.push_reply(chunk, 0.0) == 480  # queued behind the first
    assert path.push_reply(chunk, 0.1) == 2400  # the player ran dry; this one starts on arrival
    heard = pull_all(path, 6)
    assert np.all(heard[:960] == 1000) and np.all(heard[960:2400] == 0) and np.all(heard[2400:2880] == 1000)
    assert path.played_ms == pytest.approx(60.0)


def test_echo_already_due_when_its_audio_arrives_keeps_only_its_future() -> None:
    path = EchoPath(EchoOptions(delay_ms=0, level_db=0, rt60_s=0), origin_s=0.0)
    path.pull(0.0, 960)  # the microphone has captured 40 ms
    path.push_reply(np.full(960, 7, dtype=np.int16), arrival_s=0.02)  # should have started at 20 ms
    assert np.all(path.pull(0.04, 480) == 7) and np.all(path.pull(0.06, 480) == 0)


def test_the_echo_of_broadband_audio_carries_the_level_through_the_room() -> None:
    rng = np.random.default_rng(3)
    reply = (rng.standard_normal(RATE * 2) * 3000).astype(np.int16)
    for level_db in (-6.0, -12.0, -20.0):
        path = EchoPath(EchoOptions(delay_ms=120, level_db=level_db, rt60_s=0.3), origin_s=0.0)
        for k in range(100):  # 20 ms chunks arriving at real time
            path.push_reply(reply[k * FRAME : (k + 1) * FRAME], arrival_s=k * 0.02)
        heard = pull_all(path, 100)
        # from when the echo and its reverberation are established to the end of the reply
        steady = heard[round(0.5 * RATE) :]
        assert rms_dbfs(steady) - rms_dbfs(reply) == pytest.approx(level_db, abs=0.7)


def test_the_room_response_has_unit_energy_and_decays_60_db_over_rt60() -> None:
    response = room_impulse_response(0.3, direct_to_reverb_db=3.0, seed=1)
    assert float(np.sum(response**2)) == pytest.approx(1.0)
    assert len(response) == round(0.3 * RATE)
    tail = response[1:]
    assert float(np.sum(tail**2)) / response[0] ** 2 == pytest.approx(10 ** (-3 / 10), rel=1e-6)

    def energy_db(start_ms: int, end_ms: int) -> float:
        part = response[start_ms * RATE // 1000 : end_ms * RATE // 1000]
        return 10 * math.log10(float(np.mean(part**2)))

    # 60 dB per 300 ms: 20 dB per 100 ms
    assert energy_db(50, 100) - energy_db(150, 200) == pytest.approx(20, abs=2)
    assert room_impulse_response(0.0).tolist() == [1.0]


def test_background_noise_has_its_level_and_continues_across_frames() -> None:
    noise = BackgroundNoise(-50.0, seed=2)
    samples = np.concatenate([noise.pull(FRAME) for _ in range(100)])
    assert rms_dbfs(samples) == pytest.approx(-50.0, abs=0.5)
    again = BackgroundNoise(-50.0, seed=2).pull(FRAME * 100)
    assert np.allclose(samples, again)  # pulled in frames or at once: the same filter state


def test_the_microphone_mixes_the_room_into_speech_and_silence() -> None:
    sent: list[str] = []

    async def send(message: str) -> None:
        sent.append(message)

    room = Room(RoomOptions(echo=EchoOptions(delay_ms=20, level_db=0, rt60_s=0)), origin_s=100.0)
    room.push_reply(np.full(480, 300, dtype=np.int16), arrival_s=100.0)
    mic = Microphone(send, background=room)
    frames = []
    for k in range(3):
        payload, _, _ = mic._next_frame(100.0 + k * 0.02)
        audio = json.loads(payload)["audio"]
        frames.append(np.frombuffer(base64.b64decode(audio), dtype="<i2"))
    assert np.all(frames[0] == 0) and np.all(frames[1] == 300) and np.all(frames[2] == 0)
