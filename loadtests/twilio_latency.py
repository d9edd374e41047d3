"""End-of-speech -> first reply audio over /v1/twilio: `python -m loadtests.twilio_latency --help`.

Plays Twilio's side of one phone call: `connected`, `start`, then 20 ms mu-law 8 kHz `media`
frames on an absolute schedule (frame k at start + (k + 1) * 20 ms, when a phone line would
have delivered it), silence between clips, as Twilio streams a call. Each clip of the human
corpus (pocketsphinx-testdata, resampled to 8 kHz and mu-law encoded: what the telephone
network carries) is spoken once the previous reply has finished playing. The reply is played
at real time and every `mark` is returned once the audio before it has played, as Twilio does.

Latency of a clip: the arrival of the first `media` after the origin, minus the origin; the
origin is the sending of the frame holding the clip's last voiced sample, found in the audio
itself (not from the server) as `loadtests.bench_latency` finds it for its voice-to-voice
figure, so the two paths compare -- but in the 8 kHz mu-law signal the phone carries, whose
speech can end earlier than the wideband clip's (a final "s" lies mostly above 4 kHz).
`clears` counts the server's `clear`s while a clip was spoken: the server took a pause inside
the clip for the end of the turn, replied, and was interrupted by the rest of the clip.

    python -m loadtests.twilio_latency --spawn "VOXGATE_LLM=rules" --out results/twilio-latency.json
    python -m loadtests.twilio_latency --url ws://127.0.0.1:8000/v1/twilio

Exit status: 0 when every clip got a reply, 1 otherwise, 2 when it could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import websockets

from loadtests.bench_latency import BenchError, parse_env_spec, spawned_server
from loadtests.corpus import (
    HUMAN_DATA_DIR,
    SAMPLE_RATE_HZ,
    CorpusUnavailable,
    Utterance,
    load_human,
    speech_span_ms,
)
from loadtests.stats import Summary, summarize
from server.audio import PcmFrame, resample, ulaw_decode, ulaw_encode

RATE_HZ = 8_000
FRAME_MS = 20
FRAME_BYTES = RATE_HZ * FRAME_MS // 1000
SILENCE = b"\xff" * FRAME_BYTES  # mu-law digital silence
STREAM_SID = "MZ0000000000000000000000000000benc"


@dataclass(slots=True)
class ClipResult:
    name: str
    speech_end_ms: int  # in the 8 kHz phone signal: the origin
    wideband_speech_end_ms: int  # in the corpus clip
    latency_ms: float | None = None  # None: no reply within the timeout
    early_media: bool = False  # reply audio arrived before the end of the clip's speech
    clears: int = 0  # the server cut a reply of its own while the clip was spoken
    reply_ms: float = 0.0


def phone_audio(utterance: Utterance) -> tuple[bytes, int]:
    """The clip as the phone network carries it (mu-law 8 kHz), and where its speech ends."""
    samples = resample(PcmFrame(utterance.samples, SAMPLE_RATE_HZ), RATE_HZ).samples
    audio = ulaw_encode(samples)
    span = speech_span_ms(ulaw_decode(audio), RATE_HZ)
    return audio, utterance.speech_end_ms if span is None else span[1]


@dataclass(slots=True)
class _Said:
    audio: bytes
    origin_frame: int  # index (within the clip) of the frame holding the last voiced sample
    origin_s: asyncio.Future[float]
    next_byte: int = 0


class PhoneLine:
    """One call to /v1/twilio: a paced sender, and a reader that plays the reply like Twilio."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.media_arrivals: list[float] = []
        self.clear_arrivals: list[float] = []
        self._said: deque[_Said] = deque()
        self._send_lock = asyncio.Lock()
        self._play_end_s = 0.0
        self._marks: deque[tuple[float, str]] = deque()
        self._marks_changed = asyncio.Event()
        self.reply_audio_ms = 0.0

    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.ws.send(json.dumps(message))

    async def start(self) -> None:
        await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self.send(
            {
                "event": "start",
                "sequenceNumber": "1",
                "streamSid": STREAM_SID,
                "start": {
                    "streamSid": STREAM_SID,
                    "accountSid": "AC00000000000000000000000000000000",
                    "callSid": "CA00000000000000000000000000000000",
                    "tracks": ["inbound"],
                    "customParameters": {},
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": RATE_HZ, "channels": 1},
                },
            }
        )

    def say(self, audio: bytes, speech_end_ms: int) -> asyncio.Future[float]:
        """Queue mu-law audio; the future gets the send time of the frame holding its speech end."""
        origin: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        last_voiced_ms = max(0, speech_end_ms - 1)
        self._said.append(_Said(audio, last_voiced_ms // FRAME_MS, origin))
        return origin

    async def run_microphone(self) -> None:
        """Frame k at start + (k + 1) * 20 ms, forever: speech when queued, else silence."""
        started = time.monotonic()
        k = 0
        while True:
            k += 1
            await asyncio.sleep(max(0.0, started + k * FRAME_MS / 1000 - time.monotonic()))
            frame, said = SILENCE, self._said[0] if self._said else None
            if said is not None:
                frame = said.audio[said.next_byte : said.next_byte + FRAME_BYTES].ljust(FRAME_BYTES, b"\xff")
                index = said.next_byte // FRAME_BYTES
                said.next_byte += FRAME_BYTES
            payload = base64.b64encode(frame).decode()
            await self.send(
                {"event": "media", "streamSid": STREAM_SID, "media": {"track": "inbound", "payload": payload}}
            )
            if said is not None:
                if index == said.origin_frame and not said.origin_s.done():
                    said.origin_s.set_result(time.monotonic())
                if said.next_byte >= len(said.audio):
                    self._said.popleft()

    async def run_reader(self) -> None:
        async for raw in self.ws:
            now = time.monotonic()
            message = json.loads(raw)
            match message.get("event"):
                case "media":
                    audio_s = len(base64.b64decode(message["media"]["payload"])) / RATE_HZ
                    self.media_arrivals.append(now)
                    self.reply_audio_ms += audio_s * 1000
                    self._play_end_s = max(self._play_end_s, now) + audio_s
                case "mark":
                    self._marks.append((self._play_end_s, message["mark"]["name"]))
                    self._marks_changed.set()
                case "clear":
                    self.clear_arrivals.append(now)
                    self._play_end_s = now
                    while self._marks:
                        await self._return_mark(self._marks.popleft()[1])

    async def run_player(self) -> None:
        """Return each mark when the audio before it has played."""
        while True:
            if not self._marks:
                self._marks_changed.clear()
                await self._marks_changed.wait()
                continue
            due_s, name = self._marks[0]
            delay_s = due_s - time.monotonic()
            if delay_s > 0:
                self._marks_changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._marks_changed.wait(), delay_s)
                continue
            self._marks.popleft()
            await self._return_mark(name)

    async def _return_mark(self, name: str) -> None:
        await self.send({"event": "mark", "streamSid": STREAM_SID, "mark": {"name": name}})

    async def wait_quiet(self, quiet_s: float, timeout_s: float) -> None:
        """Until the reply has played out and no audio came for `quiet_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            now = time.monotonic()
            last = self.media_arrivals[-1] if self.media_arrivals else 0.0
            if now >= self._play_end_s and now - last >= quiet_s:
                return
            await asyncio.sleep(0.05)


async def run_call(
    url: str, clips: Sequence[Utterance], reply_timeout_s: float, quiet_s: float
) -> list[ClipResult]:
    results: list[ClipResult] = []
    async with websockets.connect(url, max_size=None) as ws:
        line = PhoneLine(ws)
        await line.start()
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(line.run_microphone(), name="twilio-bench-microphone"),
                tg.create_task(line.run_reader(), name="twilio-bench-reader"),
                tg.create_task(line.run_player(), name="twilio-bench-player"),
            ]
            await asyncio.sleep(1.0)  # a phone call starts with a moment of line noise
            for clip in clips:
                audio, speech_end_ms = phone_audio(clip)
                result = ClipResult(clip.name, speech_end_ms, clip.speech_end_ms)
                results.append(result)
                before_audio = line.reply_audio_ms
                said_at, cleared_at = len(line.media_arrivals), len(line.clear_arrivals)
                origin_s = await line.say(audio, speech_end_ms)
                early = [t for t in line.media_arrivals[said_at:] if t <= origin_s]
                result.early_media = bool(early)
                deadline = origin_s + reply_timeout_s
                while time.monotonic() < deadline:
                    after = [t for t in line.media_arrivals[said_at:] if t > origin_s]
                    if after:
                        result.latency_ms = (after[0] - origin_s) * 1000
                        break
                    await asyncio.sleep(0.005)
                result.clears = sum(t <= origin_s for t in line.clear_arrivals[cleared_at:])
                await line.wait_quiet(quiet_s, timeout_s=60)
                result.reply_ms = line.reply_audio_ms - before_audio
                figure = f"{result.latency_ms:7.0f} ms" if result.latency_ms is not None else "   no reply"
                note = f"  (cut into turns: {result.clears} clear)" if result.clears else ""
                print(f"  {clip.name:45s} {figure}{note}", file=sys.stderr)
            await line.send({"event": "stop", "streamSid": STREAM_SID, "stop": {}})
            for task in tasks:
                task.cancel()
    return results


def format_report(
    results: Sequence[ClipResult], summary: Summary | None, server: dict[str, float] | None = None
) -> str:
    lines = ["end of speech -> first media over /v1/twilio (mu-law 8 kHz), ms"]
    if summary is None:
        return "\n".join([*lines, "  no reply measured"])
    lines.append(
        f"  n={summary.n}  median={summary.p50:.0f}  p95={summary.p95:.0f}  "
        f"mean={summary.mean:.0f}  min={summary.min:.0f}  max={summary.max:.0f}"
    )
    missing = sum(r.latency_ms is None for r in results)
    early = sum(r.early_media for r in results)
    split = sum(r.clears > 0 for r in results)
    lines.append(
        f"  clips without a reply: {missing}; reply audio before the end of speech: {early}; "
        f"clips the server cut into several turns: {split}"
    )
    if server:
        asr_n = server.get("voxgate_asr_final_seconds_count", 0.0)
        v2v_n = server.get("voxgate_voice_to_voice_seconds_count", 0.0)
        asr = server.get("voxgate_asr_final_seconds_sum", 0.0) * 1000 / asr_n if asr_n else float("nan")
        v2v = server.get("voxgate_voice_to_voice_seconds_sum", 0.0) * 1000 / v2v_n if v2v_n else float("nan")
        lines.append(
            f"  server: {server.get('voxgate_turns_total', 0):.0f} turns, "
            f"{server.get('voxgate_interruptions_total', 0):.0f} interruptions; mean ASR final {asr:.0f} ms; "
            f"mean voice-to-voice as the server saw it (from its own end-of-speech) {v2v:.0f} ms"
        )
    return "\n".join(lines)


@contextlib.asynccontextmanager
async def target(args: argparse.Namespace) -> AsyncIterator[tuple[str, dict[str, Any] | None]]:
    if args.url:
        yield args.url, None
        return
    env = parse_env_spec(args.spawn)
    async with spawned_server(env, Path(args.server_log)) as (realtime_url, stats):
        yield realtime_url.replace("/v1/realtime", "/v1/twilio"), dataclasses.asdict(stats)


SERVER_METRICS = (
    "voxgate_turns_total",
    "voxgate_interruptions_total",
    "voxgate_asr_final_seconds_sum",
    "voxgate_asr_final_seconds_count",
    "voxgate_voice_to_voice_seconds_sum",
    "voxgate_voice_to_voice_seconds_count",
)


async def server_metrics(ws_url: str) -> dict[str, float]:
    """A few of the server's counters (all its sessions), from its /metrics page."""
    http_url = ws_url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
    base = http_url.split("/v1/", 1)[0]
    try:
        async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
            text = (await client.get(base + "/metrics")).text
    except httpx.HTTPError:
        return {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in SERVER_METRICS:
            values[name] = float(value)
    return values


async def measure(
    args: argparse.Namespace, clips: Sequence[Utterance]
) -> tuple[str, dict[str, Any] | None, list[ClipResult], dict[str, float]]:
    """Run the call; returns the endpoint, the spawned server's stats, the clips' results and
    what the server's counters moved by during the call."""
    async with target(args) as (url, server):
        before = await server_metrics(url)
        results = await run_call(url, clips, args.reply_timeout_s, args.quiet_s)
        after = await server_metrics(url)
    moved = {name: after[name] - before.get(name, 0.0) for name in after}
    return url, server, results, moved


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.twilio_latency", description=(__doc__ or "").split("\n")[0]
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="a running server's Twilio endpoint, ws://HOST:PORT/v1/twilio")
    where.add_argument(
        "--spawn",
        default="VOXGATE_LLM=rules",
        help='start `python -m server serve` with these environment variables (default: "%(default)s")',
    )
    parser.add_argument("--server-log", default="results/twilio-latency.server.log")
    parser.add_argument("--data-dir", default=str(HUMAN_DATA_DIR))
    parser.add_argument("--clips", type=int, default=0, help="only the first N clips (default: all 11)")
    parser.add_argument("--repeat", type=int, default=1, help="speak the clips this many times, in one call")
    parser.add_argument("--reply-timeout-s", type=float, default=15.0)
    parser.add_argument("--quiet-s", type=float, default=1.0, help="a reply is over after this much quiet")
    parser.add_argument("--out", help="write the figures and every clip's latency to this JSON file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        clips = load_human(Path(args.data_dir))
    except CorpusUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.clips:
        clips = clips[: args.clips]
    clips = clips * args.repeat
    try:
        url, server, results, counters = asyncio.run(measure(args, clips))
    except (BenchError, OSError, websockets.WebSocketException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = summarize(r.latency_ms for r in results)
    print(format_report(results, summary, counters))
    if args.out:
        report = {
            "url": url,
            "spawn": None if args.url else args.spawn,
            "server": server,
            "server_counters": counters,
            "summary": None if summary is None else dataclasses.asdict(summary),
            "clips": [dataclasses.asdict(r) for r in results],
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(r.latency_ms is not None for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
