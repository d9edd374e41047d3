"""loadtests.twilio_latency against the in-process server with fake models (named as such)."""

from __future__ import annotations

import numpy as np

from loadtests.corpus import SAMPLE_RATE_HZ, Utterance
from loadtests.stats import summarize
from loadtests.twilio_latency import format_report, phone_audio, run_call
from server.model.fakes import FakeAsr, FakeLlm, tone
from tests.conftest import fake_app
from tests.harness import running_server


def toned(name: str, speech_ms: int) -> Utterance:
    """`speech_ms` of loud tone (speech to the fake VAD) between 200 ms of silence."""
    pad = np.zeros(SAMPLE_RATE_HZ // 5, dtype=np.int16)
    samples = np.concatenate([pad, tone(speech_ms, SAMPLE_RATE_HZ).samples, pad])
    return Utterance(name, samples, "", "synthetic", 200, 200 + speech_ms)


def test_phone_audio_is_mu_law_8k_with_the_speech_end_found_in_it() -> None:
    audio, speech_end_ms = phone_audio(toned("a", 500))
    assert len(audio) == 900 * 8  # one byte per 8 kHz sample
    assert abs(speech_end_ms - 700) <= 10


async def test_each_clip_gets_a_latency_over_the_twilio_endpoint() -> None:
    app = fake_app(FakeAsr(["one", "two"]), FakeLlm(["Okay.", "Fine."]))
    async with running_server(app) as url:
        results = await run_call(
            url.replace("http://", "ws://") + "/v1/twilio",
            [toned("a", 500), toned("b", 400)],
            reply_timeout_s=5,
            quiet_s=0.3,
        )
    assert [r.name for r in results] == ["a", "b"]
    for result in results:
        # the server waits out its end-of-turn silence (250 ms); fake models answer at once
        assert result.latency_ms is not None and 150 <= result.latency_ms <= 1500
        assert result.clears == 0 and not result.early_media
        assert result.reply_ms > 0
    assert "n=2" in format_report(results, summarize(r.latency_ms for r in results))
