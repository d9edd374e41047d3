import asyncio
import logging
import time

import numpy as np
import pytest

from server.audio import PcmFrame, Samples
from server.errors import BackendError
from server.model.backends.espeak_tts import EspeakTts, load
from server.model.base import TtsBackend

pytestmark = pytest.mark.slow

SENTENCE = "Your order shipped yesterday and should arrive on Friday afternoon."


@pytest.fixture(scope="module")
def tts() -> EspeakTts:
    return load()


async def collect(tts: EspeakTts, text: str, voice: str = "") -> list[PcmFrame]:
    return [frame async for frame in tts.synthesize(text, voice)]


def joined(frames: list[PcmFrame]) -> Samples:
    return np.concatenate([f.samples for f in frames]) if frames else np.zeros(0, np.int16)


def pitch_hz(samples: Samples, rate_hz: int = 22_050) -> float:
    """Median autocorrelation pitch of the loud 40 ms windows."""
    window = rate_hz * 40 // 1000
    low, high = rate_hz // 400, rate_hz // 60
    pitches = []
    for start in range(0, len(samples) - window, window):
        x = samples[start : start + window].astype(np.float64)
        if np.sqrt(np.mean(x**2)) < 2000:
            continue
        correlation = np.correlate(x, x, "full")[window - 1 :]
        pitches.append(rate_hz / (low + int(np.argmax(correlation[low:high]))))
    return float(np.median(pitches))


def same_speech(a: Samples, b: Samples) -> bool:
    """eSpeak is not bit-exact from call to call (a short phrase varies by up to 2 % in
    length and 10 % in measured pitch), so compare length and pitch loosely."""
    return abs(len(a) - len(b)) < 0.03 * len(a) and abs(pitch_hz(a) - pitch_hz(b)) < 0.15 * pitch_hz(a)


def test_sample_rate_is_what_espeak_reports(tts: EspeakTts) -> None:
    backend: TtsBackend = tts
    assert backend.sample_rate_hz == 22_050


async def test_sentence_is_streamed_as_many_short_loud_frames(tts: EspeakTts) -> None:
    frames = await collect(tts, SENTENCE)
    assert len(frames) > 10
    assert all(f.sample_rate_hz == 22_050 and 0 < f.sample_count <= 22_050 // 10 for f in frames)
    seconds = sum(f.sample_count for f in frames) / 22_050
    assert 2.0 < seconds < 6.0  # ten words at 175 words per minute
    rms = np.sqrt(np.mean(joined(frames).astype(np.float64) ** 2))
    assert rms > 1000


async def test_same_text_gives_the_same_speech(tts: EspeakTts) -> None:
    assert same_speech(joined(await collect(tts, SENTENCE)), joined(await collect(tts, SENTENCE)))


async def test_first_audio_comes_before_the_phrase_is_done(tts: EspeakTts) -> None:
    long_text = " ".join([SENTENCE] * 120)  # about seven minutes of speech
    started = time.perf_counter()
    await collect(tts, long_text)
    whole_s = time.perf_counter() - started

    started = time.perf_counter()
    async for _ in tts.synthesize(long_text, ""):
        first_s = time.perf_counter() - started
        break
    assert first_s < whole_s / 5
    # Leaving early aborted that synthesis and released the engine.
    assert len(await collect(tts, "Hello.")) > 0


async def test_slower_rate_gives_longer_audio() -> None:
    slow = joined(await collect(load({"rate_wpm": 100}), SENTENCE))
    fast = joined(await collect(load({"rate_wpm": 300}), SENTENCE))
    assert len(slow) > 2 * len(fast)


async def test_a_session_speed_scales_the_rate(tts: EspeakTts) -> None:
    normal = joined([f async for f in tts.synthesize(SENTENCE, "")])
    quick = joined([f async for f in tts.synthesize(SENTENCE, "", speed=1.5)])
    slow = joined([f async for f in tts.synthesize(SENTENCE, "", speed=0.5)])
    assert len(quick) < 0.8 * len(normal) < 0.8 * 0.8 * len(slow)


async def test_named_voice_differs_from_the_default(tts: EspeakTts) -> None:
    default = joined(await collect(tts, SENTENCE))
    female = joined(await collect(tts, SENTENCE, "en-us+f3"))
    assert pitch_hz(female) > 1.5 * pitch_hz(default)
    assert same_speech(joined(await collect(tts, SENTENCE, "en-us")), default)


async def test_unknown_voice_falls_back_to_the_default_with_a_warning(
    tts: EspeakTts, caplog: pytest.LogCaptureFixture
) -> None:
    default = joined(await collect(tts, SENTENCE))
    with caplog.at_level(logging.WARNING, logger="server.model.backends.espeak_tts"):
        fallback = joined(await collect(tts, SENTENCE, "alloy-not-an-espeak-voice"))
    assert same_speech(fallback, default)
    assert [r.getMessage() for r in caplog.records] == ["unknown espeak voice, using the default"]


async def test_concurrent_phrases_do_not_mix(tts: EspeakTts) -> None:
    one, two = "Good morning, how can I help?", "Please hold the line while I check your order for you."
    expected = [joined(await collect(tts, one)), joined(await collect(tts, two))]
    results = await asyncio.gather(collect(tts, one), collect(tts, two), collect(tts, one))
    assert same_speech(joined(results[0]), expected[0])
    assert same_speech(joined(results[1]), expected[1])
    assert same_speech(joined(results[2]), expected[0])


async def test_cancelled_synthesis_leaves_the_engine_usable(tts: EspeakTts) -> None:
    reference = joined(await collect(tts, SENTENCE))
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in tts.synthesize(" ".join([SENTENCE] * 40), ""):
            started.set()
            await asyncio.sleep(0.01)

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert same_speech(joined(await collect(tts, SENTENCE)), reference)


@pytest.mark.parametrize("text", ["", "   ", "\0"])
async def test_empty_text_gives_no_audio(tts: EspeakTts, text: str) -> None:
    assert await collect(tts, text) == []


@pytest.mark.parametrize(
    "options",
    [{"voice": "no-such-voice"}, {"rate_wpm": 20}, {"rate_wpm": "fast"}, {"pitch": 50}, {"voice": ""}],
)
def test_bad_options_are_rejected(options: dict[str, object]) -> None:
    with pytest.raises(BackendError):
        load(options)
