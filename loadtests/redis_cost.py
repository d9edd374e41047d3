"""What Redis costs on the connection path: `python -m loadtests.redis_cost --help`.

    python -m loadtests.redis_cost --connections 200 --rounds 3 --out results

Starts a real redis-server (Debian's package) and two Voxgate servers with INSTANT FAKE MODELS
(FakeAsr, FakeLlm, FakeTts; the fake energy VAD) as subprocesses on loopback: `local` keeps its
limits and secrets in memory, `redis` shares them through the Redis (`VOXGATE_REDIS_URL`).
Both require an API key and have the connection-rate limits on (per address and per key, set
high enough never to refuse), so every upgrade pays what production pays: the two token
buckets, the session slot, and for a client secret its lookup.

Per connection, alternating which server goes first (paired, interleaved samples):
- `admit`: websocket connect with an API key -> `session.created` (rate limits + slot claim);
- `secret`: the same with a client secret minted beforehand (+ the secret's lookup);
- `mint`: `POST /v1/realtime/client_secrets` -> 200.
Then the Redis commands alone, from this process (`RedisState`, as a replica issues them):
token bucket, slot claim, slot release, secret lookup.

Medians and p90/p99 in ms; the difference of medians is Redis's cost per upgrade. The box is
shared: compare the two servers within one run, not figures across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final, TypeVar

import httpx
import websockets
from websockets import Subprotocol

from loadtests.redis_process import RedisUnavailable, free_port, redis_server
from loadtests.stats import Summary, summarize

KEY: Final = "sk-redis-cost-bench"
T = TypeVar("T")
REPO_ROOT: Final = Path(__file__).resolve().parents[1]
# rate limits on (so their cost is measured), never refusing at these rates
HIGH_LIMITS: Final = {
    "VOXGATE_IP_CONNECTIONS_PER_MINUTE": "1000000",
    "VOXGATE_IP_CONNECTION_BURST": "1000000",
    "VOXGATE_KEY_CONNECTIONS_PER_MINUTE": "1000000",
    "VOXGATE_KEY_CONNECTION_BURST": "1000000",
    "VOXGATE_MAX_SESSIONS": "1000",
    "VOXGATE_API_KEYS": json.dumps([KEY]),
    "VOXGATE_LOG_LEVEL": "warning",
}


def serve(port: int) -> int:
    """The server side (run in a subprocess): fake models, settings from the environment."""
    import uvicorn

    from server.http.app import create_app
    from server.model.cascade import CascadeModel
    from server.model.fakes import FAKE_AUDIO_SETTINGS, EnergyClassifierFactory, FakeAsr, FakeLlm, FakeTts
    from server.settings import Settings

    model = CascadeModel(FakeAsr(), FakeLlm(), FakeTts())
    app = create_app(Settings(**FAKE_AUDIO_SETTINGS), model=model, vad=EnergyClassifierFactory())  # type: ignore[arg-type]
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
    return 0


@contextlib.contextmanager
def server(name: str, extra_env: dict[str, str], log_dir: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, **HIGH_LIMITS, **extra_env}
    with (log_dir / f"{name}.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "loadtests.redis_cost", "--serve", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline_s = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline_s:
                raise RuntimeError(f"the {name} server did not start; see {log_dir / f'{name}.log'}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


async def timed_ms(call: Awaitable[T]) -> tuple[float, T]:
    """(ms, result) of awaiting `call` (a coroutine does nothing until awaited)."""
    started = time.perf_counter()
    result = await call
    return (time.perf_counter() - started) * 1000, result


async def open_session(url: str, subprotocols: Sequence[str], headers: dict[str, str]) -> None:
    ws_url = url.replace("http://", "ws://") + "/v1/realtime"
    offered = [Subprotocol(p) for p in subprotocols]
    async with websockets.connect(ws_url, subprotocols=offered, additional_headers=headers) as ws:
        while json.loads(await ws.recv())["type"] != "session.created":
            pass


async def measure_servers(urls: dict[str, str], connections: int) -> dict[str, dict[str, list[float]]]:
    samples: dict[str, dict[str, list[float]]] = {n: {"admit": [], "secret": [], "mint": []} for n in urls}
    key_header = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(headers=key_header) as http:
        for i in range(connections):
            order = list(urls) if i % 2 == 0 else list(reversed(urls))
            for name in order:
                url, own = urls[name], samples[name]
                mint_ms, minted = await timed_ms(http.post(url + "/v1/realtime/client_secrets", json={}))
                own["mint"].append(mint_ms)
                protocols = ["realtime", f"openai-insecure-api-key.{minted.json()['value']}"]
                own["admit"].append((await timed_ms(open_session(url, ["realtime"], key_header)))[0])
                own["secret"].append((await timed_ms(open_session(url, protocols, {})))[0])
    return samples


async def measure_commands(redis_url: str, count: int) -> dict[str, list[float]]:
    from server.shared.redis_state import RedisState

    state = RedisState(redis_url, prefix="bench", timeout_s=5.0)
    times: dict[str, list[float]] = {
        "token_bucket": [],
        "slot_claim": [],
        "slot_release": [],
        "secret_lookup": [],
    }
    try:
        await state.ping()
        for i in range(count):
            slot = f"bench:{i}"
            calls: dict[str, Awaitable[object]] = {
                "token_bucket": state.take_token("ip:127.0.0.1", 1e6, 1_000_000),
                "slot_claim": state.claim_slot(slot, "bench", 30, 0, 0),
                "slot_release": state.release_slot(slot, "bench"),
                "secret_lookup": state.load_secret("0" * 64),
            }
            for name, call in calls.items():  # in this order: the claim before its release
                times[name].append((await timed_ms(call))[0])
    finally:
        await state.close()
    return times


def summary_dict(values: list[float]) -> dict[str, float] | None:
    summary = summarize(values)
    return None if summary is None else asdict(summary)


def row(name: str, summary: Summary | None) -> str:
    if summary is None:
        return f"  {name:<24} (no samples)"
    return (
        f"  {name:<24} n={summary.n:<5} p50 {summary.p50:6.2f}  p90 {summary.p90:6.2f}  "
        f"p99 {summary.p99:6.2f}  max {summary.max:7.2f} ms"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.redis_cost", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--connections", type=int, default=200, help="connections per server per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (each: both servers, fresh)")
    parser.add_argument("--commands", type=int, default=2000, help="Redis commands timed alone")
    parser.add_argument("--out", type=Path, default=None, help="directory for redis-cost.json")
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)  # the server side
    args = parser.parse_args(argv)
    if args.serve is not None:
        return serve(args.serve)
    if args.connections < 1 or args.rounds < 1 or args.commands < 1:
        parser.error("--connections, --rounds and --commands must be >= 1")
    results: dict[str, Any] = {"rounds": []}
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        try:
            redis_context = redis_server(workdir)
            redis = redis_context.__enter__()
        except RedisUnavailable as exc:
            print(f"redis_cost: {exc}", file=sys.stderr)
            return 2
        try:
            for round_number in range(1, args.rounds + 1):
                with (
                    server("local", {}, workdir) as local,
                    server("redis", {"VOXGATE_REDIS_URL": redis.url}, workdir) as shared,
                ):
                    samples = asyncio.run(
                        measure_servers({"local": local, "redis": shared}, args.connections)
                    )
                results["rounds"].append(samples)
                print(f"round {round_number}: connection path, ms (upgrade -> session.created; mint -> 200)")
                for what in ("admit", "secret", "mint"):
                    for name in ("local", "redis"):
                        print(row(f"{what} ({name})", summarize(samples[name][what])))
            commands = asyncio.run(measure_commands(redis.url, args.commands))
        finally:
            redis_context.__exit__(None, None, None)
    results["commands"] = commands
    print("Redis commands alone (one replica's client, loopback), ms")
    for name, values in commands.items():
        print(row(name, summarize(values)))
    print("difference of medians, redis - local, per round (ms):")
    for what in ("admit", "secret", "mint"):
        deltas = []
        for samples in results["rounds"]:
            redis_p50, local_p50 = (summarize(samples[n][what]) for n in ("redis", "local"))
            assert redis_p50 is not None and local_p50 is not None
            deltas.append(redis_p50.p50 - local_p50.p50)
        print(f"  {what:<8} " + "  ".join(f"{d:+.2f}" for d in deltas))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        summary = {
            "rounds": [{n: {w: summary_dict(v[n][w]) for w in v[n]} for n in v} for v in results["rounds"]],
            "commands": {n: summary_dict(v) for n, v in commands.items()},
        }
        (args.out / "redis-cost.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
