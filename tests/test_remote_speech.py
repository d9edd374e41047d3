"""Remote speech models end to end, over real sockets.

- A real Voxgate process (`python -m server serve`: PocketSphinx, eSpeak NG, the rule-based
  responder) serves the speech API; a gateway app whose recogniser and voice are
  `openai-asr` / `openai-tts` pointed at it completes a spoken turn: speech in, transcript,
  reply, audio out.
- The gateway against a scripted upstream that is down, fails with 500, is too slow, or
  answers nonsense: the turn fails with an `error` event and the session goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from server.audio import PcmFrame, resample
from server.http.app import create_app
from server.model.backends.remote_asr import load as load_remote_asr
from server.model.backends.remote_tts import load as load_remote_tts
from server.model.cascade import CascadeModel
from server.model.deadlines import ModelDeadlines
from server.model.fakes import EnergyClassifierFactory, FakeLlm, FakeTts, tone
from server.settings import Settings
from tests.harness import RealtimeTestClient, decode_audio_deltas, realtime_client, running_server
from tests.model.scripted_http import Request, Respond, answer, chunked, scripted_server

# --- a spoken turn through a real models server ----------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def models_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`voxgate serve` with the fast profile's embedded models; yields its base URL."""
    pytest.importorskip("pocketsphinx")
    port = _free_port()
    env = {
        **os.environ,
        "VOXGATE_PORT": str(port),
        "VOXGATE_LLM": "rules",  # the models tier needs no language model of note
        "VOXGATE_VAD": "webrtc",
        "VOXGATE_LOG_LEVEL": "warning",
    }
    log_path = tmp_path_factory.mktemp("models") / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "server", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client() as http:
            for _ in range(600):
                with contextlib.suppress(httpx.TransportError):
                    if http.get(url + "/healthz").status_code == 200:
                        break
                assert process.poll() is None, log_path.read_text()
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert "Traceback" not in log_path.read_text(), log_path.read_text()


def espeak_speech(text: str) -> PcmFrame:
    """`text` spoken by eSpeak NG at 24 kHz, with 300 ms of silence before and 1 s after."""
    from server.model.backends.espeak_tts import load

    tts = load()

    async def synthesize() -> np.ndarray[Any, np.dtype[np.int16]]:
        return np.concatenate([frame.samples async for frame in tts.synthesize(text, "")])

    clip = resample(PcmFrame(asyncio.run(synthesize()), tts.sample_rate_hz), 24_000).samples
    return PcmFrame(np.concatenate([np.zeros(7_200, np.int16), clip, np.zeros(24_000, np.int16)]), 24_000)


@pytest.fixture(scope="module")
def refund_request() -> PcmFrame:
    return espeak_speech("I want a refund for my order.")


def gateway_settings(models_url: str, **settings: Any) -> Settings:
    return Settings(
        asr="openai-asr",
        tts="openai-tts",
        llm="rules",
        vad="webrtc",
        voice="en-us",  # an eSpeak voice: the models server speaks with it
        backend_options={
            "openai-asr": {"base_url": models_url + "/v1", "timeout_s": 20},
            "openai-tts": {"base_url": models_url + "/v1", "timeout_s": 20},
        },
        **settings,
    )


@pytest.mark.slow
async def test_a_spoken_turn_through_a_gateway_with_remote_speech_models(
    models_server: str, refund_request: PcmFrame
) -> None:
    async with httpx.AsyncClient(base_url=models_server + "/v1", timeout=30) as http:
        direct = await http.post(
            "/audio/speech", json={"input": "Hello.", "voice": "en-us", "response_format": "pcm"}
        )
        assert direct.status_code == 200 and len(direct.content) > 4_800  # over 0.1 s of audio
        unknown = await http.post("/audio/speech", json={"input": "Hello.", "voice": "xx-nobody"})
        assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "unknown_voice"

    app = create_app(gateway_settings(models_server))
    async with running_server(app) as url, realtime_client(url) as client:
        await client.wait_for("session.created", timeout_s=30)
        await client.stream(refund_request)
        transcript = await client.wait_for(
            "conversation.item.input_audio_transcription.completed", timeout_s=60
        )
        done = await client.wait_for("response.done", timeout_s=60)
    assert "refund" in transcript["transcript"].lower(), transcript
    assert done["response"]["status"] == "completed", client.of_type("error")
    audio = decode_audio_deltas(client.of_type("response.output_audio.delta"))
    assert len(audio) > 24_000 // 2  # the reply spoken, over half a second
    assert np.abs(audio.astype(np.int32)).max() > 1000  # speech, not silence


# --- failures of the upstream: the turn fails, the session goes on ---------------------------

FAST_DEADLINES = ModelDeadlines(asr_final_timeout_s=5, tts_phrase_timeout_s=5)


class SwitchableUpstream:
    """What the scripted upstream answers now; a test switches it between turns."""

    def __init__(self, respond: Respond) -> None:
        self.respond = respond

    async def __call__(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await self.respond(request, reader, writer)


def healthy(request: Request) -> Respond:
    if request.path.endswith("/audio/transcriptions"):
        return answer(200, b'{"text": "where is my order"}')
    return chunked("audio/pcm", [bytes(4_800)] * 5)  # 0.5 s of 24 kHz silence


async def _healthy(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await healthy(request)(request, reader, writer)


async def slow(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # never answers; returns when the backend's timeout_s closes it


def gateway(base_url: str, *, remote_tts: bool = True, timeout_s: float = 0.5) -> FastAPI:
    asr = load_remote_asr({"base_url": base_url, "timeout_s": timeout_s})
    tts: Any = load_remote_tts({"base_url": base_url, "timeout_s": timeout_s}) if remote_tts else FakeTts()
    model = CascadeModel(asr, FakeLlm(["Your order ships today."]), tts, FAST_DEADLINES)
    return create_app(Settings(echo_gate=False), model=model, vad=EnergyClassifierFactory())


async def voice_turn(client: RealtimeTestClient) -> dict[str, Any]:
    start = len(client.events)
    await client.stream(tone(600))
    await client.stream(PcmFrame.silence(600, 24_000))
    return await client.wait_for("response.done", after=start, timeout_s=20)


def last_error(client: RealtimeTestClient) -> dict[str, Any]:
    errors = client.of_type("error")
    assert errors, "no error event"
    error: dict[str, Any] = errors[-1]["error"]
    return error


@contextlib.asynccontextmanager
async def upstream(respond: Respond) -> AsyncIterator[tuple[str, SwitchableUpstream]]:
    switch = SwitchableUpstream(respond)
    async with scripted_server(switch) as server:
        yield server.base_url, switch


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        (answer(500, b'{"error": {"message": "model crashed"}}'), "HTTP 500: model crashed"),
        (slow, "timeout"),
        (answer(200, b"<html>not json</html>"), "malformed"),
    ],
    ids=["http-500", "slow", "malformed"],
)
async def test_a_failing_remote_recogniser_fails_the_turn_and_the_session_goes_on(
    failure: Respond, message: str
) -> None:
    async with upstream(failure) as (base_url, switch):
        async with running_server(gateway(base_url)) as url, realtime_client(url) as client:
            await client.wait_for("session.created")
            failed = await voice_turn(client)
            assert failed["response"]["status"] == "failed"
            error = last_error(client)
            assert error["code"] == "backend_error" and message in error["message"], error
            switch.respond = _healthy
            done = await voice_turn(client)
            assert done["response"]["status"] == "completed", client.of_type("error")
            assert client.closed is None


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        (answer(500, b'{"error": {"message": "voice crashed"}}'), "HTTP 500: voice crashed"),
        (slow, "timeout"),
        (answer(200, b'{"audio": null}'), "not raw PCM"),
    ],
    ids=["http-500", "slow", "malformed"],
)
async def test_a_failing_remote_voice_fails_the_reply_and_the_session_goes_on(
    failure: Respond, message: str
) -> None:
    async def respond(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if request.path.endswith("/audio/transcriptions"):
            await _healthy(request, reader, writer)
        else:
            await failure(request, reader, writer)

    async with upstream(respond) as (base_url, switch):
        async with running_server(gateway(base_url)) as url, realtime_client(url) as client:
            await client.wait_for("session.created")
            failed = await voice_turn(client)
            assert failed["response"]["status"] == "failed"
            assert message in last_error(client)["message"]
            switch.respond = _healthy
            assert (await voice_turn(client))["response"]["status"] == "completed"


async def test_an_upstream_that_is_down_fails_the_turn_and_typed_turns_go_on() -> None:
    base_url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens
    async with running_server(gateway(base_url, remote_tts=False)) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        failed = await voice_turn(client)
        assert failed["response"]["status"] == "failed"
        assert "cannot connect" in last_error(client)["message"]
        start = len(client.events)
        await client.say("where is my order?")
        done = await client.wait_for("response.done", after=start)
        assert done["response"]["status"] == "completed"
        assert client.closed is None
