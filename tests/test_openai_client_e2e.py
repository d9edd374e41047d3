"""The official `openai` package, unchanged, against Voxgate with real offline models.

Real pocketsphinx (speech-to-text) and espeak-ng (speech synthesis); the reply text comes from
the rule-based responder until a language model is configured. The speech is a human recording
from Debian's pocketsphinx-testdata ("go forward ten meters").
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import numpy as np
import pytest
from openai import AsyncOpenAI

from server.audio import PcmFrame, resample
from server.http.app import create_app
from server.settings import Settings
from tests.harness import running_server

GOFORWARD = Path("/usr/share/pocketsphinx/test/data/goforward.raw")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not GOFORWARD.exists(), reason="needs Debian package pocketsphinx-testdata"),
]


def speech_24k() -> PcmFrame:
    raw = PcmFrame.from_bytes(GOFORWARD.read_bytes(), 16_000)
    return resample(raw, 24_000)


async def test_openai_realtime_client_full_turn() -> None:
    app = create_app(Settings(asr="pocketsphinx", llm="rules", tts="espeak", vad="webrtc"))
    async with running_server(app) as url:
        client = AsyncOpenAI(base_url=url + "/v1", api_key="sk-test-not-checked")
        async with client.realtime.connect(model="voxgate-cascade") as connection:
            await connection.session.update(
                session={
                    "type": "realtime",
                    "output_modalities": ["audio"],
                    "instructions": "You are a helpful support agent.",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcm", "rate": 24000},
                            "turn_detection": {"type": "server_vad", "silence_duration_ms": 400},
                        },
                        "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "en-us"},
                    },
                }
            )
            events: list[str] = []
            audio = bytearray()
            user_transcript = ""
            reply_transcript = ""

            async def send_speech() -> None:
                frame = speech_24k()
                silence = PcmFrame.silence(1500, 24_000)
                joined = np.concatenate([frame.samples, silence.samples])
                step = 480  # 20 ms
                for i in range(0, len(joined), step):
                    chunk = joined[i : i + step].astype("<i2").tobytes()
                    await connection.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
                    await asyncio.sleep(0.02)

            sender = asyncio.create_task(send_speech())
            try:
                async with asyncio.timeout(60):
                    async for event in connection:
                        events.append(event.type)
                        if event.type == "conversation.item.input_audio_transcription.completed":
                            user_transcript = event.transcript
                        elif event.type == "response.output_audio.delta":
                            audio += base64.b64decode(event.delta)
                        elif event.type == "response.output_audio_transcript.done":
                            reply_transcript = event.transcript
                        elif event.type == "error":
                            pytest.fail(f"server error: {event.error}")
                        elif event.type == "response.done":
                            assert event.response.status == "completed"
                            break
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)

    assert events[0] == "session.created"
    order = [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "response.created",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_audio.delta",
        "response.output_audio.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
    ]
    positions = [events.index(e) for e in order]
    assert positions == sorted(positions), events
    words = user_transcript.lower().split()
    assert "forward" in words and "meters" in words, user_transcript
    assert reply_transcript
    samples = np.frombuffer(bytes(audio), dtype="<i2")
    assert len(samples) > 24_000 // 2  # at least half a second of speech
    assert np.sqrt(np.mean(samples.astype(np.float64) ** 2)) > 300  # not silence
