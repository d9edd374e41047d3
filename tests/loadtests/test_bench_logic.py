"""The benchmark client's measurements against a scripted fake server (tests/loadtests/
scripted_server.py), the recorder and microphone on their own, the corpus, WER and percentiles.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from loadtests.corpus import (
    HUMAN_DATA_DIR,
    SAMPLE_RATE_HZ,
    load_human,
    load_synthetic,
    make_utterance,
    parse_transcription,
    speech_span_ms,
)
from loadtests.microphone import Microphone, Speech
from loadtests.recorder import TurnRecorder, audio_stalls_ms, played_until_s
from loadtests.session import BargeInPlan, TurnPlan, run_session, session_url
from loadtests.stats import summarize
from loadtests.wer import WordErrors, normalize, wer, word_errors
from tests.loadtests.scripted_server import (
    AUDIO,
    TOLERANCE_MS,
    TRANSCRIPT,
    Script,
    check_timing,
    quick_options,
    scripted_server,
    tone_clip,
)

# --- latencies against injected delays ------------------------------------------------------


async def test_turn_latencies_match_the_injected_delays() -> None:
    script = Script()
    clip = tone_clip()
    assert (clip.speech_start_ms, clip.speech_end_ms) == (200, 800)
    async with scripted_server(script) as (url, log):
        result = await run_session(quick_options(url), [TurnPlan(clip), TurnPlan(clip)])
    assert result.errors == []
    assert [turn.role for turn in result.turns] == ["turn", "turn"]
    assert log.session_updates[0]["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 100
    last_chunk_ms = script.first_audio_ms + script.reply_audio_ms - script.lead_ms - 20
    for i, turn in enumerate(result.turns):
        check_timing(turn.voice_to_voice_ms, log.realized_ms(AUDIO, i), script.first_audio_ms)
        started = log.realized_ms("input_audio_buffer.speech_started", i, from_onset=True)
        check_timing(turn.speech_started_ms, started, script.started_ms)
        stopped = log.realized_ms("input_audio_buffer.speech_stopped", i)
        check_timing(turn.speech_stopped_ms, stopped, script.stopped_ms)
        check_timing(turn.transcript_ms, log.realized_ms(TRANSCRIPT, i), script.transcript_ms)
        check_timing(turn.response_created_ms, log.realized_ms("response.created", i), script.created_ms)
        check_timing(turn.response_done_ms, log.realized_ms("response.done", i), last_chunk_ms)
        assert turn.user_transcript == script.transcript
        assert turn.reply_transcript == "Sure."
        assert turn.reply_audio_ms == pytest.approx(script.reply_audio_ms)
        assert turn.audio_stalls == 0
        assert (turn.response_status, turn.commits, turn.responses) == ("completed", 1, 1)
    assert result.connect_ms is not None and result.connect_ms < 1000
    assert result.frames_sent > 100  # a live microphone: it never stopped
    assert len(log.speech_end_received) == 2


async def test_reply_audio_slower_than_real_time_is_a_stall() -> None:
    script = Script(reply_audio_ms=1000, lead_ms=100, pause_after_ms=500, pause_ms=300)
    async with scripted_server(script) as (url, log):
        result = await run_session(quick_options(url), [TurnPlan(tone_clip())])
    (turn,) = result.turns
    # the same player fed with the fake's send times: the stalls it really caused
    realized = audio_stalls_ms([(t, 20.0) for t in log.sent_times(AUDIO, log.speech_end_received[0])])
    check_timing(max(realized), max(realized), 200)  # the 100 ms lead covered the rest of the pause
    check_timing(turn.max_audio_stall_ms, max(realized), 200)
    assert turn.audio_stall_ms == pytest.approx(sum(realized), abs=TOLERANCE_MS)


async def test_a_slower_server_is_measured_as_slower() -> None:
    script = Script(stopped_ms=400, transcript_ms=450, created_ms=600, first_audio_ms=700)
    async with scripted_server(script) as (url, log):
        result = await run_session(quick_options(url), [TurnPlan(tone_clip())])
    (turn,) = result.turns
    check_timing(turn.voice_to_voice_ms, log.realized_ms(AUDIO, 0), 700)
    check_timing(turn.speech_stopped_ms, log.realized_ms("input_audio_buffer.speech_stopped", 0), 400)
    check_timing(turn.response_created_ms, log.realized_ms("response.created", 0), 600)


async def test_barge_in_reaction_and_audio_after_interruption() -> None:
    script = Script(reply_audio_ms=3000)
    interrupter = tone_clip("interrupter", lead_ms=0, tone_ms=400, tail_ms=100, reference="stop")
    plan = TurnPlan(tone_clip(), barge_in=BargeInPlan(interrupter, after_ms=400))
    async with scripted_server(script) as (url, log):
        result = await run_session(quick_options(url), [plan])
    assert result.errors == []
    main, interruption = result.turns
    assert (main.role, interruption.role) == ("turn", "interruption")
    barge_in = main.barge_in
    assert barge_in is not None and barge_in.sent
    assert barge_in.is_cancelled_by_turn
    (interrupted_at,) = log.interrupt_received
    chunks_after = log.sent_times(AUDIO, interrupted_at, log.speech_end_received[1])
    check_timing(
        barge_in.reaction_ms, (chunks_after[-1] - interrupted_at) * 1000, script.barge_in_reaction_ms
    )
    assert barge_in.audio_after_interrupt_ms == pytest.approx(20 * len(chunks_after), abs=20)
    # heard: until the player ran out, or the client dropped its playback at speech_started
    assert barge_in.heard_reaction_ms is not None and barge_in.heard_reaction_ms >= 0
    check_timing(barge_in.started_after_ms, barge_in.started_after_ms or 0, 400)  # heard 400 ms first
    assert main.reply_audio_ms < 1000  # cut well short of the 3 s reply
    # the interrupting speech is a turn of its own, measured like any other
    check_timing(interruption.voice_to_voice_ms, log.realized_ms(AUDIO, 1), script.first_audio_ms)
    started = log.realized_ms("input_audio_buffer.speech_started", 1, from_onset=True)
    check_timing(interruption.speech_started_ms, started, script.started_ms)
    assert interruption.response_status == "completed"
    assert interruption.barge_in is None


async def test_barge_in_is_not_sent_when_the_reply_ends_first() -> None:
    script = Script(reply_audio_ms=200)
    interrupter = tone_clip("interrupter", lead_ms=0)
    plan = TurnPlan(tone_clip(), barge_in=BargeInPlan(interrupter, after_ms=1500))
    async with scripted_server(script) as (url, log):
        result = await run_session(quick_options(url), [plan])
    (turn,) = result.turns
    assert turn.barge_in is not None and not turn.barge_in.sent
    assert turn.barge_in.reaction_ms is None
    assert log.interrupt_received == []


async def test_beta_dialect_session_update_and_events() -> None:
    async with scripted_server(Script()) as (url, log):
        result = await run_session(quick_options(url, beta=True), [TurnPlan(tone_clip())])
    assert result.errors == []
    assert log.session_updates[0]["turn_detection"]["silence_duration_ms"] == 100


# --- failures are counted, never hang -------------------------------------------------------


async def test_a_server_that_stalls_ends_the_session_with_a_timeout() -> None:
    async with scripted_server(Script(answer_turns=False)) as (url, log):
        began = time.monotonic()
        result = await run_session(quick_options(url, reply_timeout_s=1.0), [TurnPlan(tone_clip())] * 3)
        elapsed = time.monotonic() - began
    assert elapsed < 5
    assert [e.kind for e in result.errors] == ["timeout"]
    assert result.errors[0].turn == 0
    (turn,) = result.turns  # the session ends at the first stuck turn
    assert turn.error == "timeout" and turn.voice_to_voice_ms is None
    assert len(log.speech_end_received) == 1  # it did hear us


async def test_no_session_created_is_a_timeout() -> None:
    async with scripted_server(Script(send_session_created=False)) as (url, _):
        result = await run_session(quick_options(url, event_timeout_s=0.5), [TurnPlan(tone_clip())])
    assert [e.kind for e in result.errors] == ["timeout"]
    assert "session.created" in result.errors[0].message
    assert result.turns == []


async def test_the_session_deadline_bounds_everything() -> None:
    async with scripted_server(Script(answer_turns=False)) as (url, _):
        began = time.monotonic()
        result = await run_session(
            quick_options(url, reply_timeout_s=30.0, deadline_s=1.5), [TurnPlan(tone_clip())]
        )
        elapsed = time.monotonic() - began
    assert elapsed < 4
    assert [e.kind for e in result.errors] == ["deadline"]
    assert [t.error for t in result.turns] == ["deadline"]


async def test_a_server_closing_mid_turn_is_counted() -> None:
    async with scripted_server(Script(close_at_speech_end=True)) as (url, _):
        result = await run_session(quick_options(url), [TurnPlan(tone_clip())] * 2)
    assert [e.kind for e in result.errors] == ["closed"]
    assert "1011" in result.errors[0].message
    assert [t.error for t in result.turns] == ["closed"]


async def test_a_refused_connection_is_counted() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = await run_session(quick_options(f"ws://127.0.0.1:{port}/v1/realtime"), [TurnPlan(tone_clip())])
    assert [e.kind for e in result.errors] == ["connect"]


# --- the recorder and the microphone, without a network --------------------------------------


def delta(response_id: str, ms: int = 20) -> dict[str, Any]:
    audio = base64.b64encode(np.zeros(ms * 24, dtype="<i2").tobytes()).decode()
    return {"type": "response.output_audio.delta", "response_id": response_id, "delta": audio}


def user_transcript(item_id: str, text: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.input_audio_transcription.completed",
        "item_id": item_id,
        "transcript": text,
    }


def test_recorder_skips_a_reply_to_a_fragment_and_joins_transcripts() -> None:
    speech = Speech(tone_clip(), voiced_sent_s=10.0)
    recorder = TurnRecorder(0, speech, "turn")
    timeline: list[tuple[float, dict[str, Any]]] = [
        (10.5, {"type": "input_audio_buffer.speech_stopped", "item_id": "a"}),
        (10.5, {"type": "input_audio_buffer.committed", "item_id": "a"}),
        (10.6, user_transcript("a", "where is")),
        (10.6, {"type": "response.created", "response": {"id": "early"}}),
        (10.7, delta("early")),
        (10.8, {"type": "response.done", "response": {"id": "early", "status": "cancelled"}}),
    ]  # fmt: skip
    for t, event in timeline:
        recorder.observe(event, t)
    speech.end_sent_s = 11.0  # the utterance went on after the server's premature endpoint
    timeline = [
        (11.3, {"type": "input_audio_buffer.speech_stopped", "item_id": "b"}),
        (11.3, {"type": "input_audio_buffer.committed", "item_id": "b"}),
        (11.4, {"type": "response.created", "response": {"id": "final"}}),
        (11.5, delta("final")),
        (11.6, delta("early")),  # a straggler of the other response does not count
        (11.6, user_transcript("b", "my order")),
        (11.7, {"type": "response.done", "response": {"id": "final", "status": "completed"}}),
    ]  # fmt: skip
    for t, event in timeline:
        recorder.observe(event, t)
    result = recorder.result()
    assert result.user_transcript == "where is my order"
    assert (result.commits, result.responses) == (2, 2)
    assert result.voice_to_voice_ms == pytest.approx(500)
    assert result.speech_stopped_ms == pytest.approx(300)
    assert result.transcript_ms == pytest.approx(600)
    assert result.reply_audio_ms == pytest.approx(20)
    assert result.response_status == "completed"


def test_audio_stalls_simulate_a_real_time_player() -> None:
    # 3 x 100 ms chunks: on time, on time, then 150 ms late
    arrivals = [(0.0, 100.0), (0.1, 100.0), (0.35, 100.0)]
    assert audio_stalls_ms(arrivals) == [pytest.approx(150)]
    # a burst ahead of real time never stalls, even with gaps later that the buffer covers
    assert audio_stalls_ms([(0.0, 100.0), (0.0, 100.0), (0.0, 100.0), (0.25, 100.0)]) == []
    assert audio_stalls_ms([]) == []
    assert audio_stalls_ms([(0.0, 20.0), (0.022, 20.0)]) == []  # 2 ms: below the tolerance


def test_the_player_ends_when_all_it_was_sent_has_played() -> None:
    # a burst of 150 ms at 0, then 20 ms chunks on time: the buffer plays out 150 ms after the last
    arrivals = [(0.0, 150.0), *((0.02 * i, 20.0) for i in range(1, 5))]
    assert played_until_s(arrivals) == pytest.approx(0.15 + 0.08)
    assert played_until_s([(0.0, 20.0), (1.0, 20.0)]) == pytest.approx(1.02)  # a stall, then 20 ms
    assert played_until_s([]) is None


async def test_microphone_paces_frames_on_an_absolute_schedule() -> None:
    sent: list[tuple[float, dict[str, Any]]] = []

    async def send(text: str) -> None:
        sent.append((time.monotonic(), json.loads(text)))

    mic = Microphone(send, frame_ms=20)
    clip = tone_clip(lead_ms=40, tone_ms=100, tail_ms=30)  # 170 ms: 9 frames, the last one padded
    speech = mic.say(clip)
    began = time.monotonic()
    task = asyncio.create_task(mic.run())
    await asyncio.sleep(1.0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # frame k is due at start + (k + 1) * 20 ms: the count keeps up with the clock, whatever
    # the scheduling jitter (sleeping 20 ms per frame would fall behind a little every frame)
    assert abs(len(sent) - (sent[-1][0] - began) / 0.02) <= 1.5
    assert len(sent) >= 48
    frames = [np.frombuffer(base64.b64decode(e["audio"]), dtype="<i2") for _, e in sent]
    assert all(len(f) == 480 for f in frames)
    assert np.array_equal(np.concatenate(frames[:9])[: len(clip.samples)], clip.samples)
    assert not np.any(np.concatenate(frames[9:]))  # silence after the speech
    times = [t for t, _ in sent]
    assert speech.voiced_sent_s == pytest.approx(times[2], abs=0.001)  # samples 40..60 ms
    assert speech.end_sent_s == pytest.approx(times[6], abs=0.001)  # voiced until 140 ms: frame 120..140 ms
    assert speech.done_sent_s == pytest.approx(times[8], abs=0.001)
    assert mic.is_silent


def test_session_url_adds_the_model_once() -> None:
    assert session_url("ws://h:1/v1/realtime", "m") == "ws://h:1/v1/realtime?model=m"
    assert session_url("ws://h:1/v1/realtime?model=x", "m") == "ws://h:1/v1/realtime?model=x"


# --- corpus -------------------------------------------------------------------------------------


def test_speech_end_of_a_tone_then_silence() -> None:
    clip = tone_clip(lead_ms=250, tone_ms=730, tail_ms=500)
    assert (clip.speech_start_ms, clip.speech_end_ms) == (250, 980)
    assert clip.duration_ms == 1480


def test_speech_end_ignores_noise_clicks_and_a_quiet_tail() -> None:
    rng = np.random.default_rng(7)
    rate = 16_000
    noise = rng.normal(0, 30, rate * 2)  # -60 dBFS room noise
    t = np.arange(rate // 2) / rate
    noise[4000:12000] += np.sin(2 * np.pi * 200 * t) * 30_000  # speech 250..750 ms
    noise[12000:12800] += np.sin(2 * np.pi * 200 * t[:800]) * 200  # a tail 43 dB down: not speech
    noise[20000:20080] += 9000  # a 5 ms click: not speech
    samples: NDArray[np.int16] = noise.astype(np.int16)
    assert speech_span_ms(samples, rate) == (250, 750)
    assert speech_span_ms(np.zeros(rate, dtype=np.int16), rate) is None
    resampled = make_utterance("n", samples, rate, "x", "human")
    assert (resampled.speech_start_ms, resampled.speech_end_ms) == (250, 750)
    assert len(resampled.samples) == 2 * SAMPLE_RATE_HZ


def test_make_utterance_rejects_a_silent_clip() -> None:
    with pytest.raises(ValueError, match="no speech"):
        make_utterance("quiet", np.zeros(16_000, dtype=np.int16), 16_000, "", "synthetic")


def test_parse_sphinx_transcription() -> None:
    text = "<s> ten of clubs  </s> (001)\n<s> he was not an ill disposed young man </s> (sense-0880)\n\n"
    assert parse_transcription(text) == {
        "001": "ten of clubs",
        "sense-0880": "he was not an ill disposed young man",
    }


@pytest.mark.skipif(not HUMAN_DATA_DIR.is_dir(), reason="Debian pocketsphinx-testdata is not installed")
def test_human_corpus_loads_with_speech_inside_each_clip() -> None:
    corpus = load_human()
    assert len(corpus) == 11
    assert corpus[0].name == "goforward" and corpus[0].reference == "go forward ten meters"
    for utterance in corpus:
        assert utterance.source == "human" and utterance.reference
        assert utterance.samples.dtype == np.int16
        assert 0 <= utterance.speech_start_ms < utterance.speech_end_ms <= utterance.duration_ms
        assert utterance.speech_end_ms - utterance.speech_start_ms > 500


@pytest.mark.skipif(shutil.which("flite") is None, reason="Debian flite is not installed")
def test_synthetic_corpus_is_made_once_and_cached(tmp_path: Path) -> None:
    first = load_synthetic(tmp_path, ["Where is my order?"])
    cached = list(tmp_path.iterdir())
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    again = load_synthetic(tmp_path, ["Where is my order?"])
    assert cached[0].stat().st_mtime_ns == mtime
    assert np.array_equal(first[0].samples, again[0].samples)
    assert first[0].reference == "Where is my order?" and first[0].source == "synthetic"
    assert 100 <= first[0].speech_start_ms < first[0].speech_end_ms < first[0].duration_ms


# --- WER and percentiles --------------------------------------------------------------------------


def test_normalize_lowercases_strips_punctuation_and_keeps_digits() -> None:
    assert normalize("Don't STOP, it's 5-star!") == ["dont", "stop", "its", "5", "star"]
    assert normalize("  ") == []


@pytest.mark.parametrize(
    ("reference", "hypothesis", "expected"),
    [
        ("go forward ten meters", "go forward ten meters", WordErrors(0, 0, 0, 4)),
        ("go forward ten meters", "Go forward, ten meters.", WordErrors(0, 0, 0, 4)),
        ("go forward ten meters", "go forward 10 meters", WordErrors(1, 0, 0, 4)),
        ("a b c", "a c", WordErrors(0, 1, 0, 3)),
        ("a b", "a b c d", WordErrors(0, 0, 2, 2)),
        ("a b c d", "x y", WordErrors(2, 2, 0, 4)),
        ("", "", WordErrors(0, 0, 0, 0)),
        ("", "uh", WordErrors(0, 0, 1, 0)),
    ],
)
def test_word_errors(reference: str, hypothesis: str, expected: WordErrors) -> None:
    assert word_errors(reference, hypothesis) == expected


def test_wer_rate_and_pooling() -> None:
    assert wer("five five", "five") == 0.5
    assert wer("", "uh") == 1.0
    pooled = word_errors("a b c d", "a b c d") + word_errors("x y", "x")
    assert pooled.rate == pytest.approx(1 / 6)


def test_summarize_percentiles_ignore_missing_samples() -> None:
    summary = summarize([float(v) for v in range(1, 101)] + [None])
    assert summary is not None
    assert (summary.n, summary.p50, summary.max, summary.min) == (100, 50.5, 100.0, 1.0)
    assert summary.p90 == pytest.approx(90.1)
    assert summarize([None]) is None
