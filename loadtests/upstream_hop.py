"""What a gateway hop adds to a turn: `python -m loadtests.upstream_hop --help`.

    python -m loadtests.upstream_hop --runs 5 --turns 20 --out results/upstream_hop.json

Starts two processes on free loopback ports, both with INSTANT FAKE MODELS and the fake energy
VAD (`loadtests.fake_server`): the upstream U (FakeAsr, FakeLlm, FakeTts, zero delays), and a
gateway G (`fake_server --upstream U`: the `realtime` profile, every session relayed to U,
whose own VAD is then off). Each run opens one session on U ("direct") and one on G
("gateway") and speaks `--turns` tone turns at real time to each, interleaved turn by turn
and alternating which goes first, so both see the same machine load.

Per turn it measures, on the client: `input_audio_buffer.speech_stopped` received -> the first
`response.output_audio.delta` received. Both servers run the same turn-taker on the same
audio, so speech_stopped comes at the same point of the turn; what follows is the reply path:
directly, U's commit, transcription and reply; through G, G's commit, the commit and
response.create over the hop, U's transcription and reply, the relay back. The difference of
the paired turns is what the hop adds. Reported: medians and p90 per path, and the median and
p90 of the paired differences, per run and over all runs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import websockets

from loadtests.bench_latency import free_port

RATE_HZ = 24_000
FRAME_MS = 20


def _tone(ms: int) -> bytes:
    t = np.arange(ms * RATE_HZ // 1000) / RATE_HZ
    return (np.sin(2 * np.pi * 300 * t) * 8000).astype("<i2").tobytes()


def _silence(ms: int) -> bytes:
    return bytes(ms * RATE_HZ // 1000 * 2)


@contextlib.contextmanager
def _process(args: Sequence[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = [sys.executable, "-m", "loadtests.fake_server", "--port", str(port), "--vad", "energy", *args]
    process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server {command} did not start")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        process.wait(15)


class _Session:
    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.events: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read(), name="hop-reader")

    async def _read(self) -> None:
        async for message in self.ws:
            self.events.put_nowait((time.perf_counter(), json.loads(message)))

    async def _stream(self, pcm: bytes) -> None:
        step = RATE_HZ * FRAME_MS // 1000 * 2
        start = time.perf_counter()
        for n, i in enumerate(range(0, len(pcm), step)):
            audio = base64.b64encode(pcm[i : i + step]).decode()
            await self.ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
            await asyncio.sleep(max(0.0, start + (n + 1) * FRAME_MS / 1000 - time.perf_counter()))

    async def turn(self) -> float:
        """One tone turn; ms from speech_stopped to the first reply audio (both received)."""
        while not self.events.empty():
            self.events.get_nowait()
        sender = asyncio.create_task(self._stream(_tone(600) + _silence(1500)), name="hop-speaker")
        stopped_s: float | None = None
        try:
            while True:
                at, event = await asyncio.wait_for(self.events.get(), 15)
                if event["type"] == "error":
                    raise RuntimeError(f"server error: {event['error']}")
                if event["type"] == "input_audio_buffer.speech_stopped":
                    stopped_s = at
                if event["type"] == "response.output_audio.delta" and stopped_s is not None:
                    latency_ms = (at - stopped_s) * 1000
                    break
            while event["type"] != "response.done":
                _, event = await asyncio.wait_for(self.events.get(), 15)
        finally:
            await sender
        return latency_ms

    async def aclose(self) -> None:
        await self.ws.close()
        await self._reader


@contextlib.asynccontextmanager
async def _session(url: str) -> AsyncIterator[_Session]:
    async with websockets.connect(url, max_size=None) as ws:
        session = _Session(ws)
        try:
            yield session
        finally:
            await session.aclose()


def _p(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q))


async def _run(direct_url: str, gateway_url: str, turns: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {"direct": [], "gateway": []}
    async with _session(direct_url) as direct, _session(gateway_url) as gateway:
        await direct.turn()  # warm-up turns, not counted (first connections, imports)
        await gateway.turn()
        for i in range(turns):
            order = [("direct", direct), ("gateway", gateway)]
            for name, session in order if i % 2 == 0 else order[::-1]:
                samples[name].append(await session.turn())
    return samples


def _summary(samples: dict[str, list[float]]) -> dict[str, float]:
    diff = [g - d for d, g in zip(samples["direct"], samples["gateway"], strict=True)]
    return {
        "direct_p50_ms": statistics.median(samples["direct"]),
        "direct_p90_ms": _p(samples["direct"], 90),
        "gateway_p50_ms": statistics.median(samples["gateway"]),
        "gateway_p90_ms": _p(samples["gateway"], 90),
        "added_p50_ms": statistics.median(diff),
        "added_p90_ms": _p(diff, 90),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.upstream_hop", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--runs", type=int, default=5, help="runs, each with fresh sessions (default %(default)s)"
    )
    parser.add_argument("--turns", type=int, default=20, help="paired turns per run (default %(default)s)")
    parser.add_argument(
        "--out", type=Path, default=Path("results/upstream_hop.json"), help="raw samples (JSON)"
    )
    args = parser.parse_args(argv)
    up_port, gw_port = free_port(), free_port()
    direct_url = f"ws://127.0.0.1:{up_port}/v1/realtime"
    gateway_url = f"ws://127.0.0.1:{gw_port}/v1/realtime?model=voxgate-realtime"
    runs: list[dict[str, list[float]]] = []
    with _process(["--reply", "Sure."], up_port), _process(["--upstream", direct_url], gw_port):
        for run in range(args.runs):
            samples = asyncio.run(_run(direct_url, gateway_url, args.turns))
            runs.append(samples)
            s = _summary(samples)
            print(
                f"run {run + 1}: direct p50 {s['direct_p50_ms']:.1f} p90 {s['direct_p90_ms']:.1f} | gateway p50"
                f" {s['gateway_p50_ms']:.1f} p90 {s['gateway_p90_ms']:.1f} | added p50 {s['added_p50_ms']:.1f}"
                f" p90 {s['added_p90_ms']:.1f} ms",
                flush=True,
            )
    total = {k: [x for r in runs for x in r[k]] for k in ("direct", "gateway")}
    s = _summary(total)
    run_added = [_summary(r)["added_p50_ms"] for r in runs]
    print(
        f"all {len(total['direct'])} pairs: direct p50 {s['direct_p50_ms']:.1f} p90 {s['direct_p90_ms']:.1f} |"
        f" gateway p50 {s['gateway_p50_ms']:.1f} p90 {s['gateway_p90_ms']:.1f} | added p50"
        f" {s['added_p50_ms']:.1f} p90 {s['added_p90_ms']:.1f} ms; median of run medians"
        f" {statistics.median(run_added):.1f} ms"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": runs, "summary": s}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
