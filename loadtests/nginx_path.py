"""What nginx in front costs, and what a replica's death costs: `python -m loadtests.nginx_path`.

    python -m loadtests.nginx_path --sessions 1 8 --rounds 7 --turns 20 --failovers 5

Starts two replicas with INSTANT FAKE MODELS (`loadtests.fake_server`: FakeAsr, FakeLlm, FakeTts,
zero delays, the fake energy VAD) and Debian's nginx in front of them with
deploy/nginx/voxgate.conf (loadtests/balancer.py), all on loopback.

Added latency. A turn is typed: `conversation.item.create` + `response.create` sent, then the
time until the first `response.output_audio.delta` arrives (then the reply is read to its
`response.done`, and the next turn starts). That is one client message in and one audio
message out through the proxy, with nothing else in the figure that could hide it: an audio
turn's end waits for a silence deadline checked once per 20 ms frame, a jitter far above what a
proxy adds. The reply is short (FakeTts speaks "OK." in 150 ms).
Runs are paired and interleaved: each round runs the same load once straight to the replicas
(session i to replica i mod 2, as nginx spreads them) and once through nginx, in alternating
order; a round's figure is the median turn of each path, and the added latency is the median,
over rounds, of (nginx - direct). With N sessions, N clients run their turns at once.

Failover. With `--failover-sessions` sessions open through nginx (spread over both), replica A
is SIGKILLed; measured: how many sessions ended (and how many A held, from its /healthz just
before), how long until the last of them saw its connection end, and how long from the kill
until a new session through nginx succeeded (session.created, then a whole typed turn to its
response.done: the 150 ms reply leaves at once, within the server's playout lead), with the
attempts that failed before it. The survivors each answer one more turn. A is restarted
between trials.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import numpy as np
import websockets
from websockets.asyncio.client import ClientConnection, connect

from loadtests.balancer import BalancerError, Replica, fake_replica, nginx_balancer, nginx_binary

REPLY: Final = "OK."  # 150 ms of FakeTts audio
TURN_TIMEOUT_S: Final = 10.0
_USER_TURN: Final = json.dumps(
    {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]},
    }
)
_CREATE: Final = json.dumps({"type": "response.create"})


class BenchError(Exception):
    """The benchmark cannot run (nginx missing, a server would not start, a turn failed)."""


def ws_url(http_url: str) -> str:
    return http_url.replace("http://", "ws://") + "/v1/realtime?model=bench"


async def read_until(ws: ClientConnection, event_type: str) -> None:
    async with asyncio.timeout(TURN_TIMEOUT_S):
        while True:
            message = await ws.recv()
            if json.loads(message)["type"] == event_type:
                return


async def timed_turn(ws: ClientConnection) -> float:
    """One typed turn; milliseconds from sending it to the reply's first audio."""
    started_s = time.perf_counter()
    await ws.send(_USER_TURN)
    await ws.send(_CREATE)
    await read_until(ws, "response.output_audio.delta")
    first_audio_ms = (time.perf_counter() - started_s) * 1000
    await read_until(ws, "response.done")
    return first_audio_ms


async def open_session(url: str) -> ClientConnection:
    ws = await asyncio.wait_for(connect(url, max_size=None), TURN_TIMEOUT_S)
    await read_until(ws, "session.created")
    return ws


async def session_turns(url: str, turns: int) -> list[float]:
    ws = await open_session(url)
    try:
        await timed_turn(ws)  # warm-up: the session's first reply sets things up
        return [await timed_turn(ws) for _ in range(turns)]
    finally:
        await ws.close()


async def run_load(urls: Sequence[str], sessions: int, turns: int) -> list[float]:
    """`sessions` clients at once, session i on urls[i % len(urls)]; every turn's latency."""
    results = await asyncio.gather(*(session_turns(urls[i % len(urls)], turns) for i in range(sessions)))
    return [ms for session in results for ms in session]


@dataclass(frozen=True, slots=True)
class PathFigures:
    sessions: int
    rounds: int
    turns_per_path: int
    direct_median_ms: float  # median over rounds of each round's median turn
    nginx_median_ms: float
    added_median_ms: float  # median over rounds of (nginx - direct)
    added_min_ms: float
    added_max_ms: float
    direct_p90_ms: float  # over every turn of every round
    nginx_p90_ms: float
    direct_p99_ms: float
    nginx_p99_ms: float


async def measure_paths(
    direct: Sequence[str], balanced: str, sessions: int, rounds: int, turns: int
) -> PathFigures:
    per_path: dict[str, list[float]] = {"direct": [], "nginx": []}
    medians: dict[str, list[float]] = {"direct": [], "nginx": []}
    for round_index in range(rounds):
        order = ("direct", "nginx") if round_index % 2 == 0 else ("nginx", "direct")
        for path in order:
            urls = list(direct) if path == "direct" else [balanced]
            samples = await run_load(urls, sessions, turns)
            per_path[path].extend(samples)
            medians[path].append(statistics.median(samples))
    added = [n - d for n, d in zip(medians["nginx"], medians["direct"], strict=True)]
    d90, d99 = np.percentile(per_path["direct"], [90, 99])
    n90, n99 = np.percentile(per_path["nginx"], [90, 99])
    return PathFigures(
        sessions=sessions,
        rounds=rounds,
        turns_per_path=len(per_path["nginx"]),
        direct_median_ms=statistics.median(medians["direct"]),
        nginx_median_ms=statistics.median(medians["nginx"]),
        added_median_ms=statistics.median(added),
        added_min_ms=min(added),
        added_max_ms=max(added),
        direct_p90_ms=float(d90),
        nginx_p90_ms=float(n90),
        direct_p99_ms=float(d99),
        nginx_p99_ms=float(n99),
    )


@dataclass(frozen=True, slots=True)
class FailoverTrial:
    sessions: int
    on_killed: int  # the killed replica's /healthz sessions just before the kill
    lost: int  # sessions whose connection ended
    lost_close_codes: list[int | None]
    last_close_ms: float  # kill -> the last lost session saw its connection end
    new_session_ms: float  # kill -> a new session through nginx had a whole reply
    failed_attempts: int  # new sessions tried (and failed) before that
    survivors_answered: int  # sessions not lost that answered one more turn


async def healthz_sessions(replica: Replica) -> int:
    async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
        count: int = (await http.get(replica.url + "/healthz")).json()["sessions"]
        return count


async def closed_after(ws: ClientConnection, origin_s: float, timeout_s: float) -> float | None:
    """Milliseconds from `origin_s` until `ws` ended, or None if it is still open at the timeout."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ws.wait_closed(), timeout_s)
        return (time.perf_counter() - origin_s) * 1000
    return None


async def failover_trial(balanced: str, victim: Replica, sessions: int) -> FailoverTrial:
    url = ws_url(balanced)
    clients = [await open_session(url) for _ in range(sessions)]
    try:
        on_killed = await healthz_sessions(victim)
        await victim.kill()
        killed_s = time.perf_counter()
        watchers = [asyncio.create_task(closed_after(ws, killed_s, 5.0)) for ws in clients]
        failed = 0
        while True:
            try:
                ws = await open_session(url)
                try:
                    await timed_turn(ws)
                finally:
                    await ws.close()
                break
            except (OSError, TimeoutError, websockets.WebSocketException):
                failed += 1
                if time.perf_counter() - killed_s > 30:
                    raise BenchError("no new session succeeded within 30 s of the kill") from None
        new_session_ms = (time.perf_counter() - killed_s) * 1000
        closes = await asyncio.gather(*watchers)
        lost = [ws for ws, at in zip(clients, closes, strict=True) if at is not None]
        answered = 0
        for ws in clients:
            if ws not in lost:
                await timed_turn(ws)
                answered += 1
        return FailoverTrial(
            sessions=sessions,
            on_killed=on_killed,
            lost=len(lost),
            lost_close_codes=sorted({ws.close_code for ws in lost}, key=lambda c: c or 0),
            last_close_ms=max((at for at in closes if at is not None), default=0.0),
            new_session_ms=new_session_ms,
            failed_attempts=failed,
            survivors_answered=answered,
        )
    finally:
        for ws in clients:
            with contextlib.suppress(websockets.WebSocketException, OSError):
                await ws.close()


def format_paths(figures: Sequence[PathFigures]) -> str:
    lines = [
        "added latency, typed turn -> first reply audio (ms; medians over rounds of each round's median turn)",
        f"{'sessions':>8} {'rounds':>6} {'turns':>6} {'direct':>8} {'nginx':>8} {'added':>7} "
        f"{'added min..max':>15} {'p90 d/n':>13} {'p99 d/n':>13}",
    ]
    for f in figures:
        lines.append(
            f"{f.sessions:>8} {f.rounds:>6} {f.turns_per_path:>6} {f.direct_median_ms:>8.2f} {f.nginx_median_ms:>8.2f} "
            f"{f.added_median_ms:>+7.2f} {f.added_min_ms:>+7.2f}..{f.added_max_ms:<+6.2f} "
            f"{f.direct_p90_ms:>6.2f}/{f.nginx_p90_ms:<6.2f} {f.direct_p99_ms:>6.2f}/{f.nginx_p99_ms:<6.2f}"
        )
    return "\n".join(lines)


def format_failovers(trials: Sequence[FailoverTrial]) -> str:
    lines = [
        "failover: SIGKILL of one replica of two, sessions through nginx",
        f"{'sessions':>8} {'on killed':>9} {'lost':>5} {'codes':>8} {'last close ms':>13} "
        f"{'new session ms':>14} {'failed tries':>12} {'survivors ok':>12}",
    ]
    for t in trials:
        codes = ",".join(str(c) for c in t.lost_close_codes)
        lines.append(
            f"{t.sessions:>8} {t.on_killed:>9} {t.lost:>5} {codes:>8} {t.last_close_ms:>13.1f} "
            f"{t.new_session_ms:>14.1f} {t.failed_attempts:>12} {t.survivors_answered:>12}"
        )
    if trials:
        lines.append(
            f"new session after a kill: median {statistics.median(t.new_session_ms for t in trials):.1f} ms, "
            f"max {max(t.new_session_ms for t in trials):.1f} ms; sessions lost = sessions on the killed replica "
            f"in {sum(t.lost == t.on_killed for t in trials)}/{len(trials)} trials"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    async with (
        fake_replica(workdir, "a", reply=REPLY) as a,
        fake_replica(workdir, "b", reply=REPLY) as b,
        nginx_balancer(workdir / "nginx", [a.address, b.address]) as nginx,
    ):
        direct = [ws_url(a.url), ws_url(b.url)]
        paths = []
        for sessions in args.sessions:
            figures = await measure_paths(direct, ws_url(nginx.url), sessions, args.rounds, args.turns)
            print(format_paths([figures]).splitlines()[-1], file=sys.stderr, flush=True)
            paths.append(figures)
        trials = []
        for _ in range(args.failovers):
            trials.append(await failover_trial(nginx.url, a, args.failover_sessions))
            await a.start()
            await asyncio.sleep(11)  # nginx's fail_timeout (10 s): a is a candidate again
        print(format_paths(paths))
        print()
        print(format_failovers(trials))
        return {"paths": [asdict(p) for p in paths], "failovers": [asdict(t) for t in trials]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.nginx_path", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--sessions", type=int, nargs="+", default=[1, 8], help="concurrent sessions per step"
    )
    parser.add_argument("--rounds", type=int, default=7, help="paired rounds per step (default %(default)s)")
    parser.add_argument("--turns", type=int, default=20, help="timed turns per session per run")
    parser.add_argument("--failovers", type=int, default=5, help="kill trials (default %(default)s)")
    parser.add_argument("--failover-sessions", type=int, default=6, help="sessions open at each kill")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if nginx_binary() is None:
        print("nginx is not installed (scripts/system-deps.sh installs nginx-light)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="nginx-path-") as tmp:
        try:
            result = asyncio.run(run(args, Path(tmp)))
        except (BalancerError, BenchError) as exc:
            print(f"nginx_path: {exc}", file=sys.stderr)
            return 1
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
