"""The `openai-tts` backend against a scripted HTTP server on 127.0.0.1: the request, PCM
read as it arrives (odd byte boundaries), and every failure."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager

import numpy as np
import pytest

from server.audio import PcmFrame
from server.errors import BackendError
from server.model.backends.remote_tts import RemoteTts, load
from tests.model.scripted_http import answer, chunked, cut_off, scripted_server, stalling

SAMPLES = np.arange(-300, 300, dtype=np.int16) * 50
PCM = SAMPLES.astype("<i2").tobytes()


@asynccontextmanager
async def backend(base_url: str, **options: object) -> AsyncIterator[RemoteTts]:
    tts = load({"base_url": base_url, "model": "test-tts", **options})
    try:
        yield tts
    finally:
        await tts.aclose()


async def speak(tts: RemoteTts, text: str = "Hello there.", voice: str = "") -> list[PcmFrame]:
    return [frame async for frame in tts.synthesize(text, voice)]


async def test_sends_the_phrase_and_yields_pcm_split_at_odd_byte_boundaries() -> None:
    pieces = [PCM[:1], PCM[1:4], PCM[4:301], PCM[301:]]  # cut inside samples
    async with scripted_server(chunked("audio/pcm", pieces)) as server:
        async with backend(server.base_url, api_key="sk-test", voice="nova") as tts:
            frames = await speak(tts)
    assert all(f.sample_rate_hz == 24_000 for f in frames)
    assert np.array_equal(np.concatenate([f.samples for f in frames]), SAMPLES)
    assert len(frames) >= 3  # streamed as the chunks came, not gathered
    [request] = server.requests
    assert (request.method, request.path) == ("POST", "/v1/audio/speech")
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.json() == {
        "model": "test-tts",
        "input": "Hello there.",
        "voice": "nova",
        "response_format": "pcm",
    }


async def test_the_sessions_voice_wins_over_the_option_and_rate_is_configurable() -> None:
    async with scripted_server(chunked("application/octet-stream", [PCM])) as server:
        async with backend(server.base_url, sample_rate_hz=22_050) as tts:
            frames = await speak(tts, voice="en-us")
    assert frames[0].sample_rate_hz == 22_050
    assert server.requests[0].json()["voice"] == "en-us"


async def test_empty_text_sends_nothing() -> None:
    async with scripted_server(answer(500, b"")) as server:
        async with backend(server.base_url) as tts:
            assert await speak(tts, "   ") == []
    assert server.requests == []


async def test_http_400_is_not_retryable_with_the_servers_message() -> None:
    body = b'{"error": {"message": "unknown voice \'bob\'", "type": "invalid_request_error"}}'
    async with scripted_server(answer(400, body)) as server:
        async with backend(server.base_url) as tts:
            with pytest.raises(BackendError, match="HTTP 400: unknown voice 'bob'") as caught:
                await speak(tts, voice="bob")
    assert not caught.value.retryable


async def test_http_503_is_retryable() -> None:
    async with scripted_server(answer(503, b'{"error": {"message": "busy"}}')) as server:
        async with backend(server.base_url) as tts:
            with pytest.raises(BackendError, match="HTTP 503: busy") as caught:
                await speak(tts)
    assert caught.value.retryable


async def test_an_answer_that_is_not_audio_is_refused() -> None:
    async with scripted_server(answer(200, b'{"audio": "..."}')) as server:
        async with backend(server.base_url) as tts:
            with pytest.raises(BackendError, match="not raw PCM") as caught:
                await speak(tts)
    assert not caught.value.retryable


async def test_connection_refused_is_retryable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with backend(f"http://127.0.0.1:{port}/v1") as tts:
        with pytest.raises(BackendError, match="cannot connect") as caught:
            await speak(tts)
    assert caught.value.retryable


async def test_a_stalled_body_times_out_after_the_audio_so_far() -> None:
    async with scripted_server(stalling("audio/pcm", PCM[:100])) as server:
        async with backend(server.base_url, timeout_s=0.3) as tts:
            frames: list[PcmFrame] = []
            with pytest.raises(BackendError, match="timeout") as caught:
                async for frame in tts.synthesize("Hello.", ""):
                    frames.append(frame)
    assert caught.value.retryable
    assert sum(f.sample_count for f in frames) == 50


async def test_a_body_cut_off_is_retryable() -> None:
    async with scripted_server(cut_off("audio/pcm", PCM[:100])) as server:
        async with backend(server.base_url) as tts:
            with pytest.raises(BackendError, match="broke off") as caught:
                await speak(tts)
    assert caught.value.retryable


async def test_leaving_early_closes_the_connection() -> None:
    async with scripted_server(stalling("audio/pcm", PCM[:100])) as server:
        async with backend(server.base_url) as tts:
            async with aclosing(tts.synthesize("Hello.", "")) as frames:
                await anext(frames)
            await asyncio.wait_for(server.disconnected.wait(), timeout=2.0)


@pytest.mark.parametrize(
    "options",
    [{}, {"base_url": "http://x/v1", "voice": ""}, {"base_url": "http://x/v1", "speed": 2}],
    ids=["no-url", "empty-voice", "unknown-option"],
)
def test_bad_options_are_refused_with_a_clear_message(options: dict[str, object]) -> None:
    with pytest.raises(BackendError, match="openai-tts"):
        load(options)
