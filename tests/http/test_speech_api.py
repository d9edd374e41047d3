"""The speech API (/v1/audio/transcriptions, /v1/audio/speech) over a real socket, with
scripted fake backends in the model catalog: what it answers, and a clear 400 for each kind
of bad input. The real models behind it: tests/test_remote_speech.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
import pytest

from server.audio import PcmFrame
from server.http.app import create_app
from server.model.fakes import EnergyClassifierFactory, FakeAsr, FakeLlm, FakeTts
from server.model.profiles import ModelCatalog, Profile
from server.settings import Settings
from server.wav import decode_wav, encode_wav
from tests.harness import running_server


class FakeTtsWithVoices(FakeTts):
    """FakeTts that knows two voice names (the speech API asks backends that can say)."""

    def has_voice(self, voice: str) -> bool:
        return voice in ("fake-a", "fake-b")


def fake_catalog(asr: FakeAsr, tts: FakeTts, asr_name: str = "fake-asr") -> ModelCatalog:
    profile = Profile("fast", asr=asr_name, llm="fake-llm", tts="fake-tts")
    provided = {
        ("speech-to-text", asr_name): asr,
        ("language model", "fake-llm"): FakeLlm(),
        ("text-to-speech", "fake-tts"): tts,
    }
    return ModelCatalog({"fast": profile}, "fast", provided=provided)


@asynccontextmanager
async def speech_server(
    asr: FakeAsr | None = None, tts: FakeTts | None = None, asr_name: str = "fake-asr", **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    catalog = fake_catalog(asr or FakeAsr(["where is my order"]), tts or FakeTtsWithVoices(), asr_name)
    app = create_app(Settings(**settings), catalog=catalog, vad=EnergyClassifierFactory())
    async with running_server(app) as url, httpx.AsyncClient(base_url=url + "/v1", timeout=10) as http:
        yield http


def wav(duration_ms: int = 1000, rate_hz: int = 16_000) -> bytes:
    samples = (3000 * np.sin(np.arange(duration_ms * rate_hz // 1000) * 0.07)).astype(np.int16)
    return encode_wav(PcmFrame(samples, rate_hz))


async def transcribe(http: httpx.AsyncClient, data: bytes | None = None, **fields: str) -> httpx.Response:
    files = {"file": ("speech.wav", wav() if data is None else data, "audio/wav")}
    return await http.post("/audio/transcriptions", files=files, data={"model": "whisper-1", **fields})


def assert_error(response: httpx.Response, status: int, code: str, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    if param is not None:
        assert error["param"] == param


def sse_events(body: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]


# --- transcriptions --------------------------------------------------------------------------


async def test_transcription_as_json_with_the_audio_resampled_for_the_recogniser() -> None:
    asr = FakeAsr(["where is my order"])
    async with speech_server(asr) as http:
        response = await transcribe(http, wav(1000, rate_hz=8_000))
    assert response.status_code == 200, response.text
    assert response.json() == {"text": "where is my order"}
    [stream] = asr.streams
    assert stream.pushed_ms == pytest.approx(1000, abs=1)  # 8 kHz in, 16 kHz to the recogniser


async def test_transcription_as_text() -> None:
    async with speech_server() as http:
        response = await transcribe(http, response_format="text")
    assert response.status_code == 200
    assert response.text == "where is my order"


async def test_streamed_transcription_sends_deltas_then_done() -> None:
    async with speech_server(FakeAsr(["where is my order"])) as http:
        response = await transcribe(http, stream="true")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert sse_events(response.text) == [
        {"type": "transcript.text.delta", "delta": "where is"},  # the fake's one partial
        {"type": "transcript.text.done", "text": "where is my order"},
    ]


async def test_stereo_wav_is_averaged_to_mono() -> None:
    import io
    import wave

    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(2)
        writer.setsampwidth(2)
        writer.setframerate(48_000)
        writer.writeframes(np.full(48_000 * 2, 100, np.int16).tobytes())
    assert decode_wav(out.getvalue()).sample_count == 48_000
    async with speech_server() as http:
        assert (await transcribe(http, out.getvalue())).status_code == 200


async def test_a_recogniser_failure_is_an_http_error_and_an_sse_error_event() -> None:
    from server.errors import BackendError

    class Retryable(BackendError):
        def __init__(self, message: str) -> None:
            super().__init__(message, retryable=True)

    asr = FakeAsr(["x"], fail_with=Retryable)
    async with speech_server(asr) as http:
        assert_error(await transcribe(http), 503, "backend_error")
        streamed = await transcribe(http, stream="true")
        asr.fail_with = None
        assert (await transcribe(http)).json() == {"text": "x"}  # the server goes on
    [event] = sse_events(streamed.text)
    assert event["type"] == "error"
    assert "fake speech recogniser failure" in event["error"]["message"]


@pytest.mark.parametrize(
    ("files", "fields", "status", "code", "param"),
    [
        (None, {}, 400, "missing_file", "file"),
        ({"file": ("a.wav", b"", "audio/wav")}, {}, 400, "empty_file", "file"),
        ({"file": ("a.mp3", b"ID3\x04" + bytes(100), "audio/mpeg")}, {}, 400, "invalid_audio", "file"),
        ({"file": ("a.wav", wav(0), "audio/wav")}, {}, 400, "empty_file", "file"),
        ({"file": ("a.wav", wav()[:30], "audio/wav")}, {}, 400, "invalid_audio", "file"),
        ({"file": ("a.wav", wav(100, rate_hz=4_000), "audio/wav")}, {}, 400, "invalid_audio", "file"),
        (
            {"file": ("a.wav", wav())},
            {"response_format": "srt"},
            400,
            "unsupported_response_format",
            "response_format",
        ),
        ({"file": ("a.wav", wav())}, {"language": "fr"}, 400, "unsupported_language", "language"),
        ({"file": ("a.wav", wav())}, {"stream": "maybe"}, 400, "invalid_request", "stream"),
    ],
    ids=[
        "no-file",
        "empty-file",
        "not-wav",
        "no-samples",
        "cut-header",
        "rate-too-low",
        "srt",
        "french",
        "bad-stream",
    ],
)
async def test_bad_transcription_requests_get_a_400_each(
    files: dict[str, Any] | None, fields: dict[str, str], status: int, code: str, param: str
) -> None:
    async with speech_server() as http:
        data = {"model": "whisper-1", **fields}
        response = await http.post("/audio/transcriptions", files=files or {"other": ("x", b"1")}, data=data)
    assert_error(response, status, code, param)


async def test_a_24_bit_wav_is_refused_with_what_to_send() -> None:
    import io
    import wave

    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(3)
        writer.setframerate(16_000)
        writer.writeframes(bytes(3 * 1600))
    async with speech_server() as http:
        response = await transcribe(http, out.getvalue())
    assert_error(response, 400, "invalid_audio", "file")
    assert "16-bit" in response.json()["error"]["message"]


async def test_a_body_that_is_not_multipart_is_refused() -> None:
    async with speech_server() as http:
        response = await http.post("/audio/transcriptions", json={"file": "..."})
    assert_error(response, 400, "invalid_request")


async def test_an_upload_over_the_cap_is_refused_with_413() -> None:
    async with speech_server(speech_api_max_upload_bytes=50_000) as http:
        response = await transcribe(http, wav(3000))  # 96 kB
        assert_error(response, 413, "request_too_large")

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
            boundary = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
            yield boundary
            for _ in range(10):
                yield bytes(10_000)

        streamed = await http.post(
            "/audio/transcriptions",
            content=chunks(),
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        assert_error(streamed, 413, "request_too_large")
        assert (await transcribe(http)).status_code == 200


async def test_requests_beyond_the_cap_get_503_and_the_slot_comes_back() -> None:
    asr = FakeAsr(["slow"], delay_s=0.5)
    async with speech_server(asr, speech_api_max_requests=1) as http:
        first = asyncio.create_task(transcribe(http))
        for _ in range(500):  # until the first holds the slot (its stream is open)
            if asr.streams:
                break
            await asyncio.sleep(0.01)
        busy = await transcribe(http)
        assert_error(busy, 503, "speech_api_busy")
        assert busy.headers["retry-after"] == "5"
        assert (await first).status_code == 200
        asr.delay_s = 0
        assert (await transcribe(http)).status_code == 200
        streamed = await transcribe(http, stream="true")
        assert sse_events(streamed.text)[-1]["type"] == "transcript.text.done"
        assert (await transcribe(http)).status_code == 200  # the stream gave its slot back


async def test_a_profile_with_remote_speech_is_not_served() -> None:
    async with speech_server(asr_name="openai-asr") as http:
        assert_error(await transcribe(http), 501, "speech_api_unavailable")


async def test_the_api_key_is_required_when_keys_are_set() -> None:
    async with speech_server(api_keys=["sk-good"]) as http:
        assert_error(await transcribe(http), 401, "missing_api_key")
        speech = await http.post(
            "/audio/speech", json={"input": "hi"}, headers={"authorization": "Bearer sk-bad"}
        )
        assert_error(speech, 401, "invalid_api_key")
        http.headers["authorization"] = "Bearer sk-good"
        assert (await transcribe(http)).status_code == 200


async def test_the_endpoints_are_absent_when_turned_off() -> None:
    async with speech_server(speech_api=False) as http:
        assert (await transcribe(http)).status_code in (404, 405)
        assert (await http.post("/audio/speech", json={"input": "hi"})).status_code in (404, 405)


# --- speech ----------------------------------------------------------------------------------


async def test_speech_as_pcm_is_24_khz_and_streamed() -> None:
    tts = FakeTtsWithVoices(ms_per_char=10, sample_rate_hz=16_000)
    async with speech_server(tts=tts) as http:
        body = {"model": "tts-1", "input": "Hello there.", "voice": "alloy", "response_format": "pcm"}
        async with http.stream("POST", "/audio/speech", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "audio/pcm"
            assert response.headers["x-sample-rate"] == "24000"
            pieces = [piece async for piece in response.aiter_raw()]
    audio = b"".join(pieces)
    assert len(audio) % 2 == 0
    assert len(audio) // 2 == pytest.approx(len("Hello there.") * 10 * 24, rel=0.02)


async def test_speech_as_wav_with_a_voice_of_the_backend() -> None:
    async with speech_server() as http:
        response = await http.post(
            "/audio/speech", json={"input": "Hi.", "voice": "fake-b", "response_format": "wav"}
        )
    assert response.status_code == 200
    audio = decode_wav(response.content)
    assert audio.sample_rate_hz == 24_000
    assert audio.duration_ms == pytest.approx(150, abs=2)


async def test_a_synthesis_failure_before_any_audio_is_an_http_error() -> None:
    tts = FakeTtsWithVoices(hang_after_frames=0)
    async with speech_server(tts=tts, tts_phrase_timeout_s=0.2) as http:
        response = await http.post("/audio/speech", json={"input": "Hi.", "response_format": "pcm"})
    assert_error(response, 503, "backend_error")
    assert "text-to-speech" in response.json()["error"]["message"]


async def test_a_synthesis_failure_mid_stream_cuts_the_body() -> None:
    tts = FakeTtsWithVoices(hang_after_frames=2)
    async with speech_server(tts=tts, tts_phrase_timeout_s=0.2) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post("/audio/speech", json={"input": "Hello there.", "response_format": "pcm"})
        tts.hang_after_frames = None
        ok = await http.post("/audio/speech", json={"input": "Hi.", "response_format": "pcm"})
        assert ok.status_code == 200


@pytest.mark.parametrize(
    ("content", "status", "code", "param"),
    [
        (b"{not json", 400, "invalid_json", None),
        (b"[1, 2]", 400, "invalid_json", None),
        (b'{"voice": "alloy"}', 400, "invalid_input", "input"),
        (b'{"input": "   "}', 400, "invalid_input", "input"),
        (json.dumps({"input": "x" * 4097}).encode(), 400, "input_too_long", "input"),
        (b'{"input": "Hi", "voice": "bob"}', 400, "unknown_voice", "voice"),
        (b'{"input": "Hi", "voice": 7}', 400, "invalid_voice", "voice"),
        (b'{"input": "Hi", "response_format": "mp3"}', 400, "unsupported_response_format", "response_format"),
        (b'{"input": "Hi", "speed": 1.5}', 400, "unsupported_speed", "speed"),
        (b'{"input": "Hi", "stream_format": "sse"}', 400, "unsupported_stream_format", "stream_format"),
        (json.dumps({"input": "x" * 70_000}).encode(), 413, "request_too_large", None),
    ],
    ids=[
        "bad-json",
        "not-object",
        "no-input",
        "blank-input",
        "long-input",
        "unknown-voice",
        "voice-not-text",
        "mp3",
        "speed",
        "sse",
        "huge-body",
    ],
)
async def test_bad_speech_requests_get_a_clear_error_each(
    content: bytes, status: int, code: str, param: str | None
) -> None:
    async with speech_server() as http:
        response = await http.post(
            "/audio/speech", content=content, headers={"content-type": "application/json"}
        )
    assert_error(response, status, code, param)
