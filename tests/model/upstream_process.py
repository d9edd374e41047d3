"""A second Voxgate process as a gateway's upstream: `python -m loadtests.fake_server` (instant
FAKE models: FakeAsr, FakeLlm, FakeTts, the energy VAD), started and killed by tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from server.audio import PcmFrame
from server.http.app import create_app
from server.model.fakes import FAKE_AUDIO_SETTINGS, EnergyClassifierFactory, tone
from server.settings import Settings
from server.vad.detector import ClassifierFactory
from tests.harness import RealtimeTestClient, decode_audio_deltas, realtime_client, running_server

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class UpstreamProcess:
    """`start()` runs the fake server on `port` until `kill()`; `events()` what it published."""

    def __init__(self, port: int, events_log: Path, reply: str, api_key: str | None = None) -> None:
        self.port = port
        self.events_log = events_log
        self.reply = reply
        self.api_key = api_key
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    def start(self, timeout_s: float = 30.0) -> None:
        command = [
            sys.executable,
            "-m",
            "loadtests.fake_server",
            "--port",
            str(self.port),
            "--vad",
            "energy",
            "--reply",
            self.reply,
            "--events-log",
            str(self.events_log),
        ]
        if self.api_key:
            command += ["--api-key", self.api_key]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the upstream exited with {self.process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        self.kill()
        raise RuntimeError("the upstream did not start")

    def kill(self) -> None:
        """SIGKILL: the upstream vanishes mid-whatever, as a crashed host would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        if not self.events_log.exists():
            return []
        events = [json.loads(line) for line in self.events_log.read_text().splitlines() if line]
        return [e for e in events if kind is None or e["event"] == kind]


@contextlib.contextmanager
def upstream(tmp_path: Path, reply: str, api_key: str | None = None) -> Iterator[UpstreamProcess]:
    process = UpstreamProcess(free_port(), tmp_path / "upstream-events.jsonl", reply, api_key)
    process.start()
    try:
        yield process
    finally:
        process.kill()


def deltas_of(client: RealtimeTestClient, response_id: str) -> list[dict[str, Any]]:
    return [e for e in client.of_type("response.output_audio.delta") if e["response_id"] == response_id]


async def talk_over_the_reply(client: RealtimeTestClient, up: UpstreamProcess) -> dict[str, Any]:
    """With a reply playing: ~0.8 s of it heard, then the caller talks over it. Checks that
    the reply is cancelled and the upstream's item truncated to exactly what the gateway says
    the caller heard; returns the cancelled response.done."""
    first = await client.wait_for("response.output_audio.delta", timeout_s=10)
    await client.stream(PcmFrame.silence(800, 24_000))  # ~0.8 s of the reply plays
    await client.stream(tone(500))  # the caller talks over it
    await client.stream(PcmFrame.silence(600, 24_000))
    cancelled = await client.wait_for("response.done", timeout_s=10)
    assert cancelled["response"]["status"] == "cancelled", cancelled
    truncated = await client.wait_for("conversation.item.truncated")
    heard_ms = truncated["audio_end_ms"]
    sent_ms = len(decode_audio_deltas(deltas_of(client, first["response_id"]))) / 24
    assert 600 <= heard_ms <= sent_ms
    # the upstream's item was cut at exactly the gateway's figure (its last truncation of the
    # item is the client's, i.e. the gateway's, word)
    for _ in range(50):
        cuts = up.events("Truncated")
        if cuts and cuts[-1]["source"] == "client":
            break
        await asyncio.sleep(0.1)
    assert cuts[-1]["source"] == "client", cuts
    assert cuts[-1]["heard_ms"] == heard_ms
    return cancelled


def gateway_app(url: str, vad: ClassifierFactory | None = None, **options: object) -> FastAPI:
    """A gateway (FAKE audio settings) serving the `realtime` profile from `url` with these
    backend `options`; `vad`: its own VAD (default the FAKE energy VAD)."""
    settings = Settings.model_validate(
        {
            **FAKE_AUDIO_SETTINGS,
            "profile": "realtime",
            "backend_options": {"realtime": {"url": url, **options}},
            "llm_first_token_timeout_s": 5.0,
        }
    )
    return create_app(settings, vad=vad if vad is not None else EnergyClassifierFactory())


@contextlib.asynccontextmanager
async def gateway_client(
    url: str, vad: ClassifierFactory | None = None, **options: object
) -> AsyncIterator[RealtimeTestClient]:
    """A client of `gateway_app(url, vad, **options)`, its session created."""
    async with (
        running_server(gateway_app(url, vad, **options)) as gateway,
        realtime_client(gateway, path="/v1/realtime?model=voxgate-realtime") as client,
    ):
        await client.wait_for("session.created")
        yield client
