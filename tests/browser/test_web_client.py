"""The web client (clients/web/) in a real browser against a real in-process server.

Headless Chromium hears a speech WAV through its fake microphone; the server runs the real
offline models (pocketsphinx, espeak-ng, rule responder) when they load, else fakes. The page's
`window.voxgate` hooks expose what it sent, received and actually played.

Screenshots go to test-artifacts/ (web-client.png, web-client-phone.png).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.driver import (
    ClientPage,
    chromium,
    free_port,
    metric,
    open_client,
    server_on_port,
    skip_reason,
    speech_wav,
    voice_app,
)
from tests.conftest import fake_app
from tests.harness import running_server

_SKIP = skip_reason()
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(_SKIP is not None, reason=_SKIP or ""),
]

RATE = 24_000  # the page's PCM rate both ways
QUESTION = "Where is my order? I have been waiting for a week."


async def assistant_playing(page: ClientPage, timeout_s: float) -> None:
    await page.wait_until("v.state.who === 'assistant'", timeout_s, "the reply to play")


async def test_full_turn_plays_the_reply(tmp_path: Path) -> None:
    wav = speech_wav(tmp_path, QUESTION, lead_s=0.5, tail_s=1.0)
    app, models = voice_app()
    async with running_server(app) as url, chromium(microphone_wav=wav) as browser:
        page = await open_client(browser, url)
        await page.click_microphone()
        await page.wait_until("v.state.mic === 'on'", 5, "the microphone to start")
        await page.wait_until(
            "v.events.some(e => e.type === 'input_audio_buffer.speech_started')",
            10,
            "the server to hear speech",
        )
        await assistant_playing(page, 30)
        assert await page.hooks("v.state.who") == "assistant"
        await page.wait_until(
            "v.transcript.some(e => e.role === 'assistant' && e.status === 'completed')"
            " && v.state.audioItemId === null && v.state.who !== 'assistant'",
            30,
            "the reply to finish playing",
        )
        counters = await page.hooks("v.counters")
        entries = await page.hooks("v.transcript")
        latencies = await page.hooks("v.latencies")

        # the server received the speech: whole seconds of audio, a committed turn
        assert counters["samplesSent"] > 3 * RATE
        assert await metric(url, "voxgate_turns_total") >= 1
        user = [e for e in entries if e["role"] == "user"]
        assistant = [e for e in entries if e["role"] == "assistant"]
        assert user and user[0]["status"] == "completed" and user[0]["text"].strip()
        if models == "real":  # the words arrived intact enough to be recognised
            heard = set(user[0]["text"].lower().split())
            assert len(heard & {"where", "is", "my", "order", "waiting", "for", "a", "week"}) >= 4, heard
        assert assistant and assistant[0]["text"].strip() and not assistant[0]["interrupted"]
        # the page played the reply, all of it, without gaps
        assert counters["samplesReceived"] > RATE  # at least a second of reply audio
        assert (
            abs(counters["samplesPlayed"] - counters["samplesReceived"]) <= 0.01 * counters["samplesReceived"]
        )
        assert counters["underruns"] == 0
        # latency from the end of speech (seen locally in the mic level) to the first audio played
        assert len(latencies) == 1 and latencies[0]["method"] == "local"
        assert 0 < latencies[0]["latencyMs"] < 20_000
        assert await page.hooks("v.errors") == []
        assert page.page_errors == []


async def test_barge_in_stops_playback_and_truncates(tmp_path: Path) -> None:
    wav = speech_wav(tmp_path, QUESTION, lead_s=0.3, tail_s=1.0)
    app, _ = voice_app()
    async with running_server(app) as url, chromium(microphone_wav=wav) as browser:
        page = await open_client(browser, url)
        await page.click_microphone()
        await assistant_playing(page, 30)
        await page.wait_until(f"v.counters.samplesPlayed > {RATE // 2}", 10, "half a second of the reply")
        # talk over the reply: a new getUserMedia plays the WAV from its start again
        await page.click_microphone()
        await page.click_microphone()
        # the page cuts the reply when speech_started (or the cancel) finds it playing; on a
        # busy machine the server may have paused the reply (words barge-in) long enough for
        # the page to play out all it had before the cancel came: then the server's cut is
        # the only one, and it must match what the page played
        await page.wait_until(
            "v.truncatesSent.length > 0 || v.truncatedReceived.length > 0", 10, "the reply to be cut"
        )
        played_at_cut = await page.hooks("v.counters.samplesPlayed")
        await page.page.wait_for_timeout(400)
        # playback stopped at once: nothing more played while the user talks
        assert await page.hooks("v.counters.samplesPlayed") == played_at_cut
        assert await page.hooks("v.state.who") == "user"

        sent = await page.hooks("v.truncatesSent")
        if sent:
            truncate = sent[0]
            assert truncate["reason"] == "barge-in" and truncate["sent"]
            assert 0 < truncate["audioEndMs"] <= truncate["receivedSamples"] * 1000 / RATE, await page.dump()
            item_id, audio_end_ms = truncate["itemId"], truncate["audioEndMs"]
            # the server took the page's position: conversation.item.truncated echoes it
            await page.wait_until(
                f"v.truncatedReceived.some(t => t.itemId === '{item_id}' && t.audioEndMs === {audio_end_ms})",
                5,
                "the server to confirm the page's truncate",
            )
        else:
            cut_by_server = (await page.hooks("v.truncatedReceived"))[0]
            item_id, audio_end_ms = cut_by_server["itemId"], cut_by_server["audioEndMs"]
            assert await page.hooks("v.state.audioItemId") is None  # drained: nothing left to cut
            assert 0 < audio_end_ms <= played_at_cut * 1000 / RATE
        assert await metric(url, "voxgate_interruptions_total") >= 1

        # the transcript shows the heard part, and the unheard rest struck through
        cut = next(e for e in await page.hooks("v.transcript") if e["itemId"] == item_id)
        assert cut["interrupted"] and cut["heard"] and cut["unheard"].strip()
        assert cut["heard"] + cut["unheard"] == cut["text"]
        assert len(cut["heard"]) <= cut["heardMs"] / 25 + 8  # no faster than 40 characters a second
        struck = page.page.locator(f"li[data-item-id='{item_id}'] del.unheard")
        assert await struck.count() == 1

        # the conversation goes on: the second question gets its own reply
        await page.wait_until(
            f"v.transcript.some(e => e.role === 'assistant' && e.itemId !== '{item_id}')"
            " && v.state.who === 'assistant'",
            30,
            "the second reply to play",
        )
        await page.page.wait_for_timeout(300)
        shot = await page.screenshot("web-client.png")
        await page.page.set_viewport_size({"width": 390, "height": 844})
        await page.page.wait_for_timeout(200)
        phone = await page.screenshot("web-client-phone.png")
        assert shot.stat().st_size > 10_000 and phone.stat().st_size > 10_000
        assert await page.hooks("v.errors") == []
        assert page.page_errors == []


async def test_interrupt_button_cancels_and_truncates(tmp_path: Path) -> None:
    wav = speech_wav(tmp_path, QUESTION, lead_s=0.3, tail_s=1.0)
    app, _ = voice_app()
    async with running_server(app) as url, chromium(microphone_wav=wav) as browser:
        page = await open_client(browser, url)
        await page.click_microphone()
        await assistant_playing(page, 30)
        await page.wait_until(f"v.counters.samplesPlayed > {RATE // 2}", 10, "half a second of the reply")
        await page.page.keyboard.press("Escape")  # the Interrupt button's shortcut
        await page.wait_until("v.truncatesSent.length > 0", 5, "the page to cut the reply")
        truncate = (await page.hooks("v.truncatesSent"))[0]
        assert truncate["reason"] == "button"
        await page.wait_until(
            f"v.truncatedReceived.some(t => t.audioEndMs === {truncate['audioEndMs']})",
            5,
            "the server to confirm the page's truncate",
        )
        played = await page.hooks("v.counters.samplesPlayed")
        await page.page.wait_for_timeout(300)
        assert await page.hooks("v.counters.samplesPlayed") == played
        assert await page.hooks("v.state.who") != "assistant"
        assert await page.page.locator("#interrupt-btn").is_disabled()
        assert page.page_errors == []


async def test_server_down_shows_unreachable_and_reconnects() -> None:
    port = free_port()
    async with chromium() as browser:
        async with server_on_port(fake_app(), port) as url:
            page = await open_client(browser, url)
        # the server is gone: the page says so and keeps retrying
        await page.wait_until("v.state.connectionStatus.phase === 'unreachable'", 15, "'server unreachable'")
        status = page.page.locator("#connection-text")
        assert "Server unreachable" in await status.inner_text()
        assert "cannot be reached" in (await page.hooks("v.state.notice") or "")
        first_attempt = await page.hooks("v.state.connectionStatus.attempt")
        await page.wait_until(
            f"v.state.connectionStatus.attempt > {first_attempt}", 10, "another reconnection attempt"
        )
        # it comes back: the page reconnects by itself and starts a new session
        async with server_on_port(fake_app(), port):
            await page.wait_until(
                "v.state.connection === 'ready' && v.state.sessions === 2", 20, "a reconnect"
            )
            assert await status.inner_text() == "Connected"
            assert await page.page.locator("#notice").is_hidden()
            assert page.page_errors == []


@pytest.mark.parametrize(
    ("fake_ui", "fake_device", "kind", "message"),
    [
        (False, True, "denied", "permission was denied"),  # no prompt UI: headless denies
        (True, False, "missing", "No microphone was found"),  # no capture device on this machine
    ],
    ids=["permission-denied", "no-microphone"],
)
async def test_microphone_problems_are_explained(
    fake_ui: bool, fake_device: bool, kind: str, message: str
) -> None:
    async with (
        running_server(fake_app()) as url,
        chromium(fake_ui=fake_ui, fake_device=fake_device) as browser,
    ):
        page = await open_client(browser, url)
        await page.click_microphone()
        await page.wait_until("v.state.micError !== null", 10, "the microphone error")
        assert await page.hooks("v.state.micError") == kind
        assert message in await page.page.locator("#notice").inner_text()
        assert await page.hooks("v.state.mic") == "off"
        assert await page.page.locator("#mic-btn-text").inner_text() == "Start microphone"
        assert page.page_errors == []


async def test_settings_and_server_errors() -> None:
    async with running_server(fake_app()) as url, chromium() as browser:
        page = await open_client(browser, url)
        await page.page.evaluate("document.getElementById('settings-details').open = true")
        await page.page.fill("#voice", "en-gb-scotland")
        await page.page.locator("#silence").fill("650")
        await page.page.locator("#threshold").fill("0.7")
        await page.page.fill("#instructions", "Answer in one short sentence.")
        await page.page.click("#apply-btn")
        await page.wait_until(
            "v.session.audio.output.voice === 'en-gb-scotland'"
            " && v.session.audio.input.turn_detection.silence_duration_ms === 650",
            5,
            "session.updated with the new settings",
        )
        session = await page.hooks("v.session")
        assert session["audio"]["input"]["turn_detection"]["threshold"] == 0.7
        assert session["instructions"] == "Answer in one short sentence."
        assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": RATE}
        assert await page.page.locator("#settings-status").inner_text() == "Applied."

        # settings survive a reload (localStorage) and are sent to the new session
        await page.page.reload()
        await page.wait_until(
            "v.state.connection === 'ready'"
            " && v.session.audio.input.turn_detection.silence_duration_ms === 650",
            10,
            "the saved settings in the new session",
        )

        # a server error event is shown to the user
        await page.hooks("v.send({type: 'no.such.event'})")
        await page.wait_until("v.errors.length > 0", 5, "the server's error event")
        assert "unknown_event" in await page.page.locator("#errors").inner_text()
        assert page.page_errors == []


async def test_keyboard_reaches_every_control() -> None:
    async with running_server(fake_app()) as url, chromium() as browser:
        page = await open_client(browser, url)
        await page.page.evaluate("document.getElementById('settings-details').open = true")
        await page.page.locator("body").focus()
        reached: list[str] = []
        for _ in range(14):
            await page.page.keyboard.press("Tab")
            reached.append(
                await page.page.evaluate(
                    "(() => { const e = document.activeElement;"
                    " return e.id || (e.tagName === 'SUMMARY' ? 'settings-summary' : e.tagName); })()"
                )
            )
        for control in (
            "mic-btn",
            "scroller",
            "settings-summary",
            "voice",
            "profile",
            "threshold",
            "turn-detection",
            "silence",
        ):
            assert control in reached, reached
        # every button has a name a screen reader can say
        unnamed = await page.page.evaluate(
            "[...document.querySelectorAll('button')].filter(b => !b.hidden &&"
            " !(b.textContent.trim() || b.getAttribute('aria-label'))).length"
        )
        assert unnamed == 0
        # the microphone button works from the keyboard
        await page.page.focus("#mic-btn")
        await page.page.keyboard.press("Enter")
        await page.wait_until("v.state.mic === 'on'", 5, "the microphone to start from the keyboard")
        assert await page.page.get_attribute("#mic-btn", "aria-pressed") == "true"


async def test_pure_helpers_in_the_browser() -> None:
    async with running_server(fake_app()) as url, chromium() as browser:
        page = await open_client(browser, url)
        result = await page.page.evaluate(
            """async () => {
                const { splitHeard } = await import('/transcript.js');
                const { backoffDelayMs, realtimeUrl } = await import('/connection.js');
                const { VoiceActivity } = await import('/voice-activity.js');
                const { sessionUpdate } = await import('/settings.js');
                const { playedAtCut } = await import('/audio.js');
                // voice 0-1000 ms, a pause, voice again 1500-1800 ms; frames every 20 ms
                const voice = new VoiceActivity(20);
                for (let t = 0; t <= 2400; t += 20) {
                    const voiced = t < 1000 || (t >= 1500 && t < 1800);
                    voice.push(voiced ? -20 : -120, t);
                }
                const text = 'Let me check on your order. Could you read me the number?';
                const progress = { itemId: 'a', playedSamples: 900 };
                return {
                    // what the page reports as played when it cuts item 'a': the worklet's answer,
                    // else (it had drained 'a' just before the clear) its drained figure
                    cutHeld: playedAtCut('a', { itemId: 'a', playedSamples: 1200 }, null, progress),
                    cutDrained: playedAtCut('a', { itemId: null, playedSamples: 0 },
                                            { itemId: 'a', playedSamples: 31200 }, progress),
                    cutSilent: playedAtCut('a', null, { itemId: 'b', playedSamples: 5 }, progress),
                    cutUnknown: playedAtCut('a', { itemId: null, playedSamples: 0 }, null, null),
                    half: splitHeard(text, 500, { totalMs: 1000 }),
                    none: splitHeard(text, 0, { totalMs: 1000 }),
                    all: splitHeard(text, 5000, { totalMs: 1000 }),
                    rate: splitHeard(text, 600, { msPerChar: 60 }),
                    delays: [1, 2, 3, 4, 10, 30].map(
                        a => [backoffDelayMs(a, () => 0), backoffDelayMs(a, () => 1)]),
                    secure: realtimeUrl({ protocol: 'https:', host: 'example.org' }, 'voxgate-fast'),
                    plain: realtimeUrl({ protocol: 'http:', host: '127.0.0.1:8000' }, null),
                    mounted: realtimeUrl({ protocol: 'http:', host: 'h', pathname: '/voice/' }, null),
                    page: realtimeUrl({ protocol: 'http:', host: 'h', pathname: '/voice/index.html' }, null),
                    // speech_stopped for the first part, arriving while the user speaks again
                    endFirst: voice.speechEndBefore(1650, 300),
                    endSecond: voice.speechEndBefore(2140, 300),
                    endNone: voice.speechEndBefore(9000, 300),
                    update: sessionUpdate({ voice: 'en-gb', silenceMs: 500 },
                                          { inputRateHz: 24000, outputRateHz: 24000 }),
                    bare: sessionUpdate({}, { inputRateHz: 16000, outputRateHz: 24000 }),
                    semantic: sessionUpdate(
                        { turnDetection: 'semantic_vad', eagerness: 'low', silenceMs: 500, threshold: 0.6 },
                        { inputRateHz: 24000, outputRateHz: 24000 }),
                    // no type chosen: the server's semantic_vad stays
                    kept: sessionUpdate({ threshold: 0.6, silenceMs: 500 },
                                        { inputRateHz: 24000, outputRateHz: 24000 },
                                        { audio: { input: { turn_detection: { type: 'semantic_vad' } } } }),
                };
            }"""
        )
        text = "Let me check on your order. Could you read me the number?"
        # a reply played out to the end just before the cut is not reported as unheard
        assert (result["cutHeld"], result["cutDrained"], result["cutSilent"], result["cutUnknown"]) == (
            1200,
            31200,
            900,
            0,
        )
        assert result["half"]["heard"] + result["half"]["unheard"] == text
        assert result["half"]["heard"] == "Let me check on your order."
        assert result["none"] == {"heard": "", "unheard": text}
        assert result["all"] == {"heard": text, "unheard": ""}
        assert result["rate"]["heard"] == "Let me"  # 600 ms at 60 ms per character: 10 characters
        assert result["delays"] == [
            [250, 500],
            [500, 1000],
            [1000, 2000],
            [2000, 4000],
            [7500, 15000],
            [7500, 15000],
        ]
        assert result["secure"] == "wss://example.org/v1/realtime?model=voxgate-fast"
        assert result["plain"] == "ws://127.0.0.1:8000/v1/realtime"
        assert result["mounted"] == result["page"] == "ws://h/voice/v1/realtime"
        assert (result["endFirst"], result["endSecond"], result["endNone"]) == (980, 1780, None)
        session = result["update"]["session"]
        assert session["audio"]["output"] == {
            "format": {"type": "audio/pcm", "rate": 24000},
            "voice": "en-gb",
        }
        assert session["audio"]["input"]["turn_detection"] == {
            "type": "server_vad",
            "silence_duration_ms": 500,
        }
        assert "instructions" not in session  # only what the user applied
        assert result["bare"]["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 16000}
        assert "voice" not in result["bare"]["session"]["audio"]["output"]
        # no turn detection setting applied: the session's stays whatever the server runs
        assert "turn_detection" not in result["bare"]["session"]["audio"]["input"]
        # each type carries only its own fields (the server refuses eagerness with server_vad)
        assert result["semantic"]["session"]["audio"]["input"]["turn_detection"] == {
            "type": "semantic_vad",
            "eagerness": "low",
        }
        assert result["kept"]["session"]["audio"]["input"]["turn_detection"] == {"type": "semantic_vad"}
