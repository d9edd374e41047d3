"""The `openai-asr` backend against a scripted HTTP server on 127.0.0.1: the request it
sends, JSON and streamed answers (OpenAI's and vLLM's shapes), and every failure."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import pytest

from server.audio import AudioFormatError, PcmFrame
from server.errors import BackendError
from server.model.backends.remote_asr import RemoteAsr, load
from server.model.base import Transcript
from server.wav import decode_wav
from tests.model.scripted_http import answer, chunked, cut_off, in_turn, scripted_server, sse, stalling

RATE = 16_000
TONE = PcmFrame((3000 * np.sin(np.arange(RATE) * 0.05)).astype(np.int16), RATE)  # 1 s


@asynccontextmanager
async def backend(base_url: str, **options: object) -> AsyncIterator[RemoteAsr]:
    asr = load({"base_url": base_url, "model": "test-asr", **options})
    try:
        yield asr
    finally:
        await asr.aclose()


async def transcribe(asr: RemoteAsr, audio: PcmFrame = TONE) -> list[Transcript]:
    stream = asr.open_stream()
    try:
        step = RATE // 50
        for start in range(0, audio.sample_count, step):
            stream.push_audio(PcmFrame(audio.samples[start : start + step], RATE))
        stream.end_input()
        return [t async for t in stream]
    finally:
        await stream.aclose()


def free_port() -> int:
    with socket.socket() as probe:  # free a moment ago, nothing listens
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_sends_the_utterance_as_wav_and_reads_a_json_answer() -> None:
    async with scripted_server(answer(200, b'{"text": " Where is my order? "}')) as server:
        async with backend(server.base_url, api_key="sk-test", language="en") as asr:
            transcripts = await transcribe(asr)
    assert transcripts == [Transcript("Where is my order?", is_final=True)]
    [request] = server.requests
    assert (request.method, request.path) == ("POST", "/v1/audio/transcriptions")
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.form_field("model") == b"test-asr"
    assert request.form_field("language") == b"en"
    assert request.form_field("response_format") == b"json"
    assert request.form_field("stream") == b"true"  # auto: asks, and reads JSON too
    wav = request.form_field("file")
    assert wav is not None
    sent = decode_wav(wav)
    assert sent.sample_rate_hz == RATE
    assert np.array_equal(sent.samples, TONE.samples)


async def test_openai_stream_gives_partials_then_the_done_text() -> None:
    events = sse(
        {"type": "transcript.text.delta", "delta": "Where"},
        {"type": "transcript.text.delta", "delta": " is my"},
        {"type": "transcript.text.done", "text": "Where is my order?"},
    )
    async with scripted_server(chunked("text/event-stream", events)) as server:
        async with backend(server.base_url, stream=True) as asr:
            assert await transcribe(asr) == [
                Transcript("Where", is_final=False),
                Transcript("Where is my", is_final=False),
                Transcript("Where is my order?", is_final=True),
            ]


async def test_vllm_stream_shape_ends_at_done_marker() -> None:
    def chunk(content: str) -> dict[str, object]:
        return {"object": "transcription.chunk", "choices": [{"delta": {"content": content}}]}

    events = sse(chunk("Hello"), chunk(" there."), {"choices": [], "usage": {"seconds": 1}}, "[DONE]")
    async with scripted_server(chunked("text/event-stream", events)) as server:
        async with backend(server.base_url) as asr:
            transcripts = await transcribe(asr)
    assert transcripts[-1] == Transcript("Hello there.", is_final=True)
    assert [t.is_final for t in transcripts] == [False, False, True]


async def test_stream_off_does_not_ask_and_no_language_is_sent_when_empty() -> None:
    async with scripted_server(answer(200, b'{"text": "hi"}')) as server:
        async with backend(server.base_url, stream=False, language="") as asr:
            assert await transcribe(asr) == [Transcript("hi", is_final=True)]
    [request] = server.requests
    assert request.form_field("stream") is None
    assert request.form_field("language") is None


async def test_auto_retries_without_stream_when_the_server_refuses_it_and_remembers() -> None:
    refuse = answer(400, b'{"error": {"message": "stream is not supported"}}')
    respond = in_turn(refuse, answer(200, b'{"text": "one"}'), answer(200, b'{"text": "two"}'))
    async with scripted_server(respond) as server:
        async with backend(server.base_url) as asr:
            assert await transcribe(asr) == [Transcript("one", is_final=True)]
            assert await transcribe(asr) == [Transcript("two", is_final=True)]
    assert [r.form_field("stream") for r in server.requests] == [b"true", None, None]


async def test_no_audio_is_an_empty_final_without_a_request() -> None:
    async with scripted_server(answer(500, b"")) as server:
        async with backend(server.base_url) as asr:
            stream = asr.open_stream()
            stream.end_input()
            assert [t async for t in stream] == [Transcript("", is_final=True)]
            await stream.aclose()
    assert server.requests == []


async def test_audio_at_another_rate_is_refused() -> None:
    async with backend("http://127.0.0.1:9/v1") as asr:
        stream = asr.open_stream()
        with pytest.raises(AudioFormatError, match="16000 Hz"):
            stream.push_audio(PcmFrame.silence(20, 24_000))
        await stream.aclose()


async def test_audio_past_the_cap_drops_the_oldest() -> None:
    async with scripted_server(answer(200, b'{"text": "ok"}')) as server:
        async with backend(server.base_url, max_utterance_s=1) as asr:
            loud_then_quiet = PcmFrame(
                np.concatenate([np.full(RATE, 1000, np.int16), np.zeros(RATE, np.int16)]), RATE
            )
            await transcribe(asr, loud_then_quiet)
    wav = server.requests[0].form_field("file")
    assert wav is not None
    sent = decode_wav(wav)
    assert sent.sample_count == RATE  # the newest second
    assert not sent.samples.any()


async def test_http_500_is_retryable_with_the_servers_message() -> None:
    body = json.dumps({"error": {"message": "decoder pool exhausted"}}).encode()
    async with scripted_server(answer(500, body)) as server:
        async with backend(server.base_url) as asr:
            with pytest.raises(BackendError, match="HTTP 500: decoder pool exhausted") as caught:
                await transcribe(asr)
    assert caught.value.retryable


async def test_http_401_is_not_retryable() -> None:
    async with scripted_server(answer(401, b'{"error": {"message": "invalid API key"}}')) as server:
        async with backend(server.base_url, stream=False) as asr:
            with pytest.raises(BackendError, match="HTTP 401: invalid API key") as caught:
                await transcribe(asr)
    assert not caught.value.retryable


async def test_connection_refused_is_retryable() -> None:
    async with backend(f"http://127.0.0.1:{free_port()}/v1") as asr:
        with pytest.raises(BackendError, match="cannot connect") as caught:
            await transcribe(asr)
    assert caught.value.retryable


async def test_a_silent_server_times_out() -> None:
    async with scripted_server(stalling("application/json", None)) as server:
        async with backend(server.base_url, timeout_s=0.3) as asr:
            started = time.monotonic()
            with pytest.raises(BackendError, match="timeout") as caught:
                await transcribe(asr)
            elapsed_s = time.monotonic() - started
    assert caught.value.retryable
    assert elapsed_s < 5.0


async def test_a_stream_cut_off_before_the_end_is_retryable() -> None:
    first = sse({"type": "transcript.text.delta", "delta": "Where"})[0]
    async with scripted_server(cut_off("text/event-stream", first)) as server:
        async with backend(server.base_url) as asr:
            with pytest.raises(BackendError) as caught:
                await transcribe(asr)
    assert caught.value.retryable


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        ("application/json", b"<html>oops</html>", "not JSON"),
        ("application/json", b'{"transcript": "hi"}', 'no "text"'),
        ("text/event-stream", b"data: {broken\n\n", "not JSON"),
        ("text/event-stream", b'data: {"type": "transcript.text.done"}\n\n', "without a text"),
    ],
    ids=["json-not-json", "json-without-text", "event-not-json", "done-without-text"],
)
async def test_malformed_answers_are_not_retryable(content_type: str, body: bytes, message: str) -> None:
    async with scripted_server(chunked(content_type, [body])) as server:
        async with backend(server.base_url) as asr:
            with pytest.raises(BackendError, match=message) as caught:
                await transcribe(asr)
    assert not caught.value.retryable


async def test_an_error_event_raises_its_message() -> None:
    events = sse({"type": "error", "error": {"message": "audio too long"}})
    async with scripted_server(chunked("text/event-stream", events)) as server:
        async with backend(server.base_url) as asr:
            with pytest.raises(BackendError, match="audio too long"):
                await transcribe(asr)


async def test_closing_mid_stream_closes_the_connection() -> None:
    first = sse({"type": "transcript.text.delta", "delta": "Where"})[0]
    async with scripted_server(stalling("text/event-stream", first)) as server:
        async with backend(server.base_url) as asr:
            stream = asr.open_stream()
            stream.push_audio(TONE)
            stream.end_input()
            transcripts = aiter(stream)
            assert await anext(transcripts) == Transcript("Where", is_final=False)
            assert stream.hypothesis == "Where"
            await stream.aclose()
            await asyncio.wait_for(server.disconnected.wait(), timeout=2.0)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"base_url": "models:8000"},
        {"base_url": "http://x/v1", "stream": "yes"},
        {"base_url": "http://x/v1", "timeout_s": 0},
        {"base_url": "http://x/v1", "sample_rate_hz": 44_100.0},
        {"base_url": "http://x/v1", "modle": "typo"},
    ],
    ids=["no-url", "url-without-scheme", "bad-stream", "zero-timeout", "float-rate", "unknown-option"],
)
def test_bad_options_are_refused_with_a_clear_message(options: dict[str, object]) -> None:
    with pytest.raises(BackendError, match="openai-asr"):
        load(options)
