"""What a gateway hop adds to a turn: `python -m loadtests.upstream_hop --help`.

    python -m loadtests.upstream_hop --runs 5 --turns 20 --out results/upstream_hop.json
    python -m loadtests.upstream_hop --upstream-vad --runs 3 --turns 15

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

`--upstream-vad` adds a third process, a gateway G2 to U with `turn_detection: "upstream"` (U's
VAD ends the turns; G2 runs none), and a third session interleaved with the others. Its
speech_stopped reaches the client later (it comes from U, over the hop), so the figure that
compares all three is the other one measured per turn: the end of the tone (its last frame
sent) -> the first reply audio received, which holds the VAD's silence as well as the reply
path. Reported beside the first for every path.
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
        self.tone_sent_s: float | None = None

    async def _read(self) -> None:
        async for message in self.ws:
            self.events.put_nowait((time.perf_counter(), json.loads(message)))

    async def _stream(self, pcm: bytes, tone_bytes: int = len(_tone(600))) -> None:
        step = RATE_HZ * FRAME_MS // 1000 * 2
        start = time.perf_counter()
        for n, i in enumerate(range(0, len(pcm), step)):
            audio = base64.b64encode(pcm[i : i + step]).decode()
            await self.ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
            if i + step == tone_bytes:
                self.tone_sent_s = time.perf_counter()
            await asyncio.sleep(max(0.0, start + (n + 1) * FRAME_MS / 1000 - time.perf_counter()))

    async def turn(self) -> tuple[float, float]:
        """One tone turn; ms from speech_stopped to the first reply audio (both received), and
        from the tone's last frame sent to the first reply audio."""
        while not self.events.empty():
            self.events.get_nowait()
        self.tone_sent_s = None
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
                    assert self.tone_sent_s is not None
                    end_to_audio_ms = (at - self.tone_sent_s) * 1000
                    break
            while event["type"] != "response.done":
                _, event = await asyncio.wait_for(self.events.get(), 15)
        finally:
            await sender
        return latency_ms, end_to_audio_ms

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


async def _run(urls: dict[str, str], turns: int) -> dict[str, list[float]]:
    """Per path, the speech_stopped -> audio samples and (under `<path>_end`) the end of the
    tone -> audio samples, turn by turn, rotating which path goes first."""
    samples: dict[str, list[float]] = {k: [] for name in urls for k in (name, f"{name}_end")}
    async with contextlib.AsyncExitStack() as stack:
        sessions = [(name, await stack.enter_async_context(_session(url))) for name, url in urls.items()]
        for _, session in sessions:
            await session.turn()  # warm-up turns, not counted (first connections, imports)
        for i in range(turns):
            shift = i % len(sessions)
            for name, session in sessions[shift:] + sessions[:shift]:
                stopped_ms, end_ms = await session.turn()
                samples[name].append(stopped_ms)
                samples[f"{name}_end"].append(end_ms)
    return samples


def _summary(samples: dict[str, list[float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, values in samples.items():
        out[f"{name}_p50_ms"] = statistics.median(values)
        out[f"{name}_p90_ms"] = _p(values, 90)
    diff = [g - d for d, g in zip(samples["direct"], samples["gateway"], strict=True)]
    out["added_p50_ms"] = statistics.median(diff)
    out["added_p90_ms"] = _p(diff, 90)
    if "upstream_vad_end" in samples:
        vs = [u - g for g, u in zip(samples["gateway_end"], samples["upstream_vad_end"], strict=True)]
        out["upstream_vad_vs_gateway_end_p50_ms"] = statistics.median(vs)
        out["upstream_vad_vs_gateway_end_p90_ms"] = _p(vs, 90)
    return out


def _line(s: dict[str, float], paths: Sequence[str]) -> str:
    parts = [
        f"{name} p50 {s[f'{name}_p50_ms']:.1f} p90 {s[f'{name}_p90_ms']:.1f}"
        f" (tone end: {s[f'{name}_end_p50_ms']:.1f} / {s[f'{name}_end_p90_ms']:.1f})"
        for name in paths
    ]
    parts.append(f"added p50 {s['added_p50_ms']:.1f} p90 {s['added_p90_ms']:.1f}")
    if "upstream_vad_vs_gateway_end_p50_ms" in s:
        parts.append(
            f"upstream VAD - gateway VAD, tone end: p50 {s['upstream_vad_vs_gateway_end_p50_ms']:.1f}"
            f" p90 {s['upstream_vad_vs_gateway_end_p90_ms']:.1f}"
        )
    return " | ".join(parts) + " ms"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.upstream_hop", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--runs", type=int, default=5, help="runs, each with fresh sessions (default %(default)s)"
    )
    parser.add_argument("--turns", type=int, default=20, help="paired turns per run (default %(default)s)")
    parser.add_argument(
        "--upstream-vad",
        action="store_true",
        help="also a gateway whose turns are ended by the upstream's VAD (a third path)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("results/upstream_hop.json"), help="raw samples (JSON)"
    )
    args = parser.parse_args(argv)
    up_port, gw_port, gw2_port = free_port(), free_port(), free_port()
    direct_url = f"ws://127.0.0.1:{up_port}/v1/realtime"
    urls = {
        "direct": direct_url,
        "gateway": f"ws://127.0.0.1:{gw_port}/v1/realtime?model=voxgate-realtime",
    }
    if args.upstream_vad:
        urls["upstream_vad"] = f"ws://127.0.0.1:{gw2_port}/v1/realtime?model=voxgate-realtime"
    runs: list[dict[str, list[float]]] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(_process(["--reply", "Sure."], up_port))
        stack.enter_context(_process(["--upstream", direct_url], gw_port))
        if args.upstream_vad:
            stack.enter_context(
                _process(["--upstream", direct_url, "--upstream-turn-detection", "upstream"], gw2_port)
            )
        for run in range(args.runs):
            samples = asyncio.run(_run(urls, args.turns))
            runs.append(samples)
            print(f"run {run + 1}: {_line(_summary(samples), list(urls))}", flush=True)
    total = {k: [x for r in runs for x in r[k]] for k in runs[0]}
    s = _summary(total)
    run_added = [_summary(r)["added_p50_ms"] for r in runs]
    print(
        f"all {len(total['direct'])} turns per path: {_line(s, list(urls))}; median of run medians of"
        f" the added hop {statistics.median(run_added):.1f} ms"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": runs, "summary": s}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
