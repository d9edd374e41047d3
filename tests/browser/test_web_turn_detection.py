"""The web client's turn detection in a real browser: the server VAD / semantic VAD choice in
its settings, and Stop microphone ending the user's turn in both modes.

Against the server with fakes: the speech WAV only has to be heard (energy VAD), and a fake
language model that scores every line as unfinished makes semantic_vad wait its longest
(8 s at eagerness low), so a turn that ends sooner was ended by the page.
"""

from __future__ import annotations

import time
import wave
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from server.model.base import Message, SessionOptions
from server.model.fakes import FakeAsr, FakeLlm
from tests.browser.driver import ClientPage, chromium, open_client, skip_reason, speech_wav
from tests.conftest import fake_app
from tests.harness import running_server

_SKIP = skip_reason()
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(_SKIP is not None, reason=_SKIP or ""),
]

RATE = 24_000  # the page's PCM rate both ways
LEAD_S = 0.3


class UnfinishedLlm(FakeLlm):
    """Scores every line as unfinished: semantic_vad waits the eagerness' maximum."""

    def __init__(self) -> None:
        super().__init__(["Go on."])
        self.scored: list[str] = []

    async def end_of_turn_probability(
        self, history: Sequence[Message], words: str, options: SessionOptions
    ) -> float:
        self.scored.append(words)
        return 0.0


async def open_settings(page: ClientPage) -> None:
    await page.page.evaluate("document.getElementById('settings-details').open = true")


async def test_semantic_vad_is_chosen_in_settings_and_echoed() -> None:
    async with running_server(fake_app()) as url, chromium() as browser:
        page = await open_client(browser, url)
        await open_settings(page)
        # server VAD (the server's default): its silence slider shows, no eagerness
        assert await page.page.input_value("#turn-detection") == "server_vad"
        assert await page.page.locator("#silence").is_visible()
        assert await page.page.locator("#eagerness").is_hidden()

        await page.page.select_option("#turn-detection", "semantic_vad")
        # semantic_vad has no silence, nor (as OpenAI defines it) a threshold
        assert await page.page.locator("#silence").is_hidden()
        assert await page.page.locator("#threshold").is_hidden()
        await page.page.select_option("#eagerness", "high")
        await page.page.click("#apply-btn")
        await page.wait_until(
            "v.session.audio.input.turn_detection.type === 'semantic_vad'"
            " && v.session.audio.input.turn_detection.eagerness === 'high'",
            5,
            "session.updated with semantic VAD",
        )
        assert await page.page.locator("#settings-status").inner_text() == "Applied."
        assert "semantic VAD" in await page.page.locator("#session-info").inner_text()
        assert await page.hooks("v.errors") == []

        # saved: a reload shows and sends it again
        await page.page.reload()
        await page.wait_until(
            "v.state.connection === 'ready' && v.session.audio.input.turn_detection.eagerness === 'high'",
            10,
            "the saved choice in the new session",
        )
        await open_settings(page)
        assert await page.page.input_value("#turn-detection") == "semantic_vad"
        assert await page.page.input_value("#eagerness") == "high"
        assert await page.page.locator("#eagerness").is_visible()

        # and back to server VAD with its own silence
        await page.page.select_option("#turn-detection", "server_vad")
        await page.page.locator("#silence").fill("700")
        await page.page.click("#apply-btn")
        await page.wait_until(
            "v.session.audio.input.turn_detection.type === 'server_vad'"
            " && v.session.audio.input.turn_detection.silence_duration_ms === 700",
            5,
            "session.updated with server VAD",
        )
        assert await page.hooks("v.errors") == []
        assert page.page_errors == []


async def test_the_servers_turn_detection_is_kept_and_shown() -> None:
    """A server whose default is semantic_vad stays so: the page shows it and does not send
    server_vad over it, even when the user applies other settings."""
    app = fake_app(turn_detection="semantic_vad", eagerness="low")
    async with running_server(app) as url, chromium() as browser:
        page = await open_client(browser, url)
        await page.wait_until(
            "v.events.some(e => e.type === 'session.updated')", 5, "the page's first update"
        )
        assert (await page.hooks("v.session"))["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"
        await open_settings(page)
        assert await page.page.input_value("#turn-detection") == "semantic_vad"
        assert await page.page.input_value("#eagerness") == "low"
        assert await page.page.locator("#silence").is_hidden()

        await page.page.fill("#voice", "en-gb")
        await page.page.click("#apply-btn")
        await page.wait_until("v.session.audio.output.voice === 'en-gb'", 5, "the new voice")
        td = (await page.hooks("v.session"))["audio"]["input"]["turn_detection"]
        assert (td["type"], td["eagerness"]) == ("semantic_vad", "low")
        assert page.page_errors == []


def speech_seconds(wav: Path, *, lead_s: float, tail_s: float) -> float:
    with wave.open(str(wav)) as f:
        frames: int = f.getnframes()
        rate: int = f.getframerate()
    return frames / rate - lead_s - tail_s


@pytest.mark.parametrize(
    ("settings", "commits"),
    [
        # an unfinished line: the server would wait 8 s of silence
        ({"turn_detection": "semantic_vad", "eagerness": "low"}, 1),
        # a long silence, so that only the page's stop ends the turn this soon
        ({"turn_detection": "server_vad", "silence_duration_ms": 3000}, 0),
    ],
    ids=["semantic_vad", "server_vad"],
)
async def test_stopping_the_microphone_ends_the_turn(
    tmp_path: Path, settings: dict[str, Any], commits: int
) -> None:
    wav = speech_wav(tmp_path, "My order number is", lead_s=LEAD_S, tail_s=3.0)
    speech_s = speech_seconds(wav, lead_s=LEAD_S, tail_s=3.0)
    llm = UnfinishedLlm()
    app = fake_app(asr=FakeAsr(script=["my order number is"]), llm=llm, **settings)
    async with running_server(app) as url, chromium(microphone_wav=wav) as browser:
        page = await open_client(browser, url)
        await page.click_microphone()
        await page.wait_until(
            "v.events.some(e => e.type === 'input_audio_buffer.speech_started')",
            10,
            "the server to hear speech",
        )
        # the user said their words and has been quiet for a second: the server still waits
        sent = int(RATE * (LEAD_S + speech_s + 1.0))
        await page.wait_until(f"v.counters.samplesSent > {sent}", 10, "a second of silence after the speech")
        assert await page.hooks("v.events.some(e => e.type === 'input_audio_buffer.committed')") is False
        assert await page.hooks("v.state.who") == "user"

        await page.click_microphone()  # Stop microphone: "I'm done"
        stopped_s = time.monotonic()
        await page.wait_until(
            "v.events.some(e => e.type === 'input_audio_buffer.committed')"
            " && v.events.some(e => e.type === 'response.created')",
            2.5,
            "the turn to end and a reply to start after the stop",
        )
        assert time.monotonic() - stopped_s < 2.5
        assert len(await page.hooks("v.commitsSent")) == commits
        if settings["turn_detection"] == "semantic_vad":
            assert llm.scored, "the server never scored the words: the test proves nothing"
        await page.wait_until("v.latencies.length === 1", 10, "the reply to play")
        latency = (await page.hooks("v.latencies"))[0]
        if commits:  # the turn ended at the press, not at a silence
            assert latency["method"] == "stop"
        user = [e for e in await page.hooks("v.transcript") if e["role"] == "user"]
        assert len(user) == 1 and user[0]["text"] == "my order number is"
        assert await page.hooks("v.state.who") != "user"
        assert await page.hooks("v.errors") == []
        assert page.page_errors == []
