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
