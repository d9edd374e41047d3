"""Soak run: does the server leak under hours-like use? `python -m loadtests.soak --help`.

    python -m loadtests.soak --spawn fake --duration 10m --concurrent 4 --out soak.json
    python -m loadtests.soak --url ws://HOST:PORT/v1/realtime --duration 30m

What runs, all at once, for `--duration`:
- a steady concurrent load: `--concurrent` callers talking in turns (`loadtests.load.Load`:
  each speaks an utterance like a live microphone, waits for the reply, pauses, speaks again;
  a dropped caller redials);
- sequential short sessions, one after another, as fast as they complete: a connect and
  close, a typed turn (`conversation.item.create` + `response.create` until `response.done`),
  and every `SPOKEN_EVERY`-th a spoken turn (`loadtests.session.run_session`). Thousands of
  session set-ups and tear-downs are where per-session leaks show;
- with `--abusers K` (default 1), during the second half only: K clients sending malformed
  input without pause (bad JSON, unknown events, bad base64, binary frames, wrong types,
  huge strings), each message of which must be answered with an `error` event. The concurrent
  callers' voice-to-voice latency is printed for the quiet half and the abused half.

What is measured: the server's `/debug/stats` (RSS, open file descriptors, asyncio tasks, live
sessions; server/http/process_stats.py) before the load (after a short warm-up, so first-use
allocations are not counted as growth), every `--sample-every` seconds, and after the load has
drained (no sessions left, or `DRAIN_TIMEOUT_S`). Growth = after - before, judged against noise
thresholds: RSS `--rss-noise-mib`, file descriptors `FD_NOISE`, tasks and sessions none. The RSS
slope over the second half of the samples (MiB per 10 minutes) is printed beside it: a leak
climbs steadily, noise does not. Errors are counted by kind, separately for the well-behaved
clients (the target is zero) and the abusers (malformed input is expected to get errors; a
message left unanswered or a 1011 close is the failure there).

`--spawn fake` starts `loadtests.soak_server` (INSTANT FAKE MODELS that keep no record of
their calls, the fake energy VAD, a short reply) on a free port; `--spawn real` starts
`python -m server serve` with the real models of the environment (`--env 'VOXGATE_ASR=...'`),
as loadtests/bench_latency does. Either way the connection-rate limit is off and the session
limit raised to fit the load. The exit status is 0 when every verdict passes, 1 otherwise, 2
on a usage or start-up error.

The clients (sequential short sessions, abusers) live in `loadtests.soak_clients`. Like the
rest of `loadtests`, this module imports nothing from the server: the server is a subprocess.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np

from loadtests.bench_latency import BenchError, free_port, parse_env_spec, spawned_server
from loadtests.corpus import SAMPLE_RATE_HZ, Utterance, load_corpus, make_utterance
from loadtests.load import Load, LoadPlan, LoadResult
from loadtests.session import SessionOptions
from loadtests.soak_clients import AbuseCounts, SequentialCounts, abuser, sequential_sessions, short_session
from loadtests.stats import Summary, summarize
from loadtests.target import parse_duration_s

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
FD_NOISE: Final = 4  # open fds may differ by a few: keep-alive sockets, a log file rotating
DRAIN_TIMEOUT_S: Final = 20.0
WARMUP_SESSIONS: Final = 10
FAKE_REPLY: Final = "Okay, done."  # 11 characters, 550 ms of the fake TTS's tone
STAT_FIELDS: Final = ("rss_kb", "open_fds", "asyncio_tasks", "sessions", "threads")


class SoakError(Exception):
    """The soak cannot run (bad arguments, the server would not start or has no /debug/stats)."""


# --- the clip the callers speak -----------------------------------------------------------------


def tone_utterance(lead_ms: int = 200, tone_ms: int = 700, tail_ms: int = 200) -> Utterance:
    """Silence, a loud 300 Hz tone, silence: 'speech' to the fake energy VAD."""
    rate = SAMPLE_RATE_HZ
    t = np.arange(tone_ms * rate // 1000) / rate
    samples = np.concatenate(
        (
            np.zeros(lead_ms * rate // 1000),
            np.sin(2 * np.pi * 300 * t) * 8000,
            np.zeros(tail_ms * rate // 1000),
        )
    ).astype(np.int16)
    return make_utterance("tone", samples, rate, "hello", "synthetic")


# --- server stats ---------------------------------------------------------------------------------


def http_base(ws_url: str) -> str:
    """ws://HOST:PORT/v1/realtime?x -> http://HOST:PORT"""
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return urlunsplit((scheme, parts.netloc, "", "", ""))


@dataclass(frozen=True, slots=True)
class Sample:
    t_s: float  # since the soak began
    stats: dict[str, Any]


async def read_stats(http: httpx.AsyncClient, base: str) -> dict[str, Any]:
    response = await http.get(f"{base}/debug/stats")
    if response.status_code != 200:
        raise SoakError(
            f"{base}/debug/stats answered {response.status_code}; the server is too old for a soak"
        )
    stats: dict[str, Any] = response.json()
    return stats


async def drained_stats(http: httpx.AsyncClient, base: str, baseline_tasks: int | None) -> dict[str, Any]:
    """Stats once no session is left and the task count is back (or after DRAIN_TIMEOUT_S)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        stats = await read_stats(http, base)
        settled = stats["sessions"] == 0 and (
            baseline_tasks is None or stats["asyncio_tasks"] <= baseline_tasks
        )
        if settled or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.25)


@dataclass(frozen=True, slots=True)
class Growth:
    name: str
    before: float | None
    after: float | None
    noise: float

    @property
    def growth(self) -> float | None:
        return None if self.before is None or self.after is None else self.after - self.before

    @property
    def is_within_noise(self) -> bool:
        return self.growth is not None and self.growth <= self.noise


def growth_table(before: dict[str, Any], after: dict[str, Any], rss_noise_kb: float) -> list[Growth]:
    noise = {"rss_kb": rss_noise_kb, "open_fds": float(FD_NOISE), "asyncio_tasks": 0.0, "sessions": 0.0}
    return [Growth(name, before.get(name), after.get(name), limit) for name, limit in noise.items()]


def rss_slope_mib_per_10min(samples: Sequence[Sample]) -> float | None:
    """Least-squares slope of RSS over the second half of the samples, in MiB per 10 minutes."""
    tail = [s for s in samples[len(samples) // 2 :] if s.stats.get("rss_kb") is not None]
    if len(tail) < 3:
        return None
    t = np.array([s.t_s for s in tail])
    rss_mib = np.array([s.stats["rss_kb"] / 1024 for s in tail])
    if float(np.ptp(t)) <= 0:
        return None
    slope_per_s = float(np.polyfit(t, rss_mib, 1)[0])
    return slope_per_s * 600


# --- the run --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class SoakSettings:
    url: str
    duration_s: float
    concurrent: int
    abusers: int
    sample_every_s: float
    rss_noise_mib: float
    utterances: list[Utterance]
    silence_ms: int = 300
    seed: int = 0


@dataclass(slots=True)
class PhaseResult:
    name: str
    abusers: int
    load: LoadResult

    def voice_to_voice(self) -> Summary | None:
        return summarize(t.voice_to_voice_ms for t in self.load.turns())

    def error_counts(self) -> Counter[str]:
        errors: Counter[str] = Counter()
        for session in self.load.sessions:
            for error in session.result.errors:
                errors[f"{error.kind}:{error.code}" if error.code else error.kind] += 1
        return errors


@dataclass(slots=True)
class SoakResult:
    settings: SoakSettings
    before: dict[str, Any]
    after: dict[str, Any]
    samples: list[Sample]
    phases: list[PhaseResult]
    sequential: SequentialCounts
    abuse: AbuseCounts
    wall_s: float

    def growth(self) -> list[Growth]:
        return growth_table(self.before, self.after, self.settings.rss_noise_mib * 1024)

    def well_behaved_errors(self) -> Counter[str]:
        errors = Counter(self.sequential.errors)
        for phase in self.phases:
            errors.update(phase.error_counts())
        return errors

    def verdicts(self) -> dict[str, bool]:
        verdicts = {f"{g.name} growth within noise": g.is_within_noise for g in self.growth()}
        verdicts["no errors for well-behaved clients"] = not self.well_behaved_errors()
        verdicts["every malformed message answered with an error"] = not self.abuse.failures
        return verdicts

    @property
    def is_passed(self) -> bool:
        return all(self.verdicts().values())


async def _sampler(http: httpx.AsyncClient, base: str, t0: float, every_s: float, into: list[Sample]) -> None:
    while True:
        await asyncio.sleep(every_s)
        with contextlib.suppress(httpx.HTTPError):
            into.append(Sample(time.monotonic() - t0, await read_stats(http, base)))


def _load_plan(settings: SoakSettings, duration_s: float, seed: int) -> LoadPlan:
    session = SessionOptions(
        url=settings.url, silence_duration_ms=settings.silence_ms, lead_silence_ms=300, reply_timeout_s=30.0
    )
    return LoadPlan(
        session=session,
        sessions=settings.concurrent,
        duration_s=duration_s,
        ramp_s=min(2.0, duration_s / 4),
        grace_s=30.0,
        pause_ms=(300, 1200),
        redial_s=1.0,
        seed=seed,
    )


async def run_soak(settings: SoakSettings, progress: Any = None) -> SoakResult:
    """Warm up, sample, run the phases with the sequential sessions beside, drain, sample."""
    base = http_base(settings.url)
    say = progress or (lambda text: None)
    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as http:
        await read_stats(http, base)  # fails early without /debug/stats
        for n in range(WARMUP_SESSIONS):
            await short_session(settings.url, "typed" if n % 2 else "connect")
        warm = await drained_stats(http, base, None)
        before = await drained_stats(http, base, warm["asyncio_tasks"])
        say(f"before: {_stats_line(before)}")
        t0 = time.monotonic()
        samples = [Sample(0.0, before)]
        sequential, abuse = SequentialCounts(), AbuseCounts()
        stop_sequential = asyncio.Event()
        phases: list[PhaseResult] = []
        phase_plan = [("quiet", 0, settings.duration_s)]
        if settings.abusers > 0:
            half = settings.duration_s / 2
            phase_plan = [("quiet", 0, half), ("abused", settings.abusers, half)]
        async with asyncio.TaskGroup() as tasks:
            sampler = tasks.create_task(
                _sampler(http, base, t0, settings.sample_every_s, samples), name="soak-sampler"
            )
            spoken = settings.utterances[0]
            seq = tasks.create_task(
                sequential_sessions(settings.url, spoken, stop_sequential, sequential, settings.silence_ms),
                name="soak-sequential",
            )
            for index, (name, abusers, duration_s) in enumerate(phase_plan):
                stop_abuse = asyncio.Event()
                abuse_tasks = [
                    tasks.create_task(
                        abuser(settings.url, stop_abuse, abuse, settings.seed + k), name=f"soak-abuser-{k}"
                    )
                    for k in range(abusers)
                ]
                say(
                    f"phase {name}: {settings.concurrent} concurrent callers, {abusers} abusers, {duration_s:.0f} s"
                )
                load = await Load(
                    _load_plan(settings, duration_s, settings.seed + index), settings.utterances
                ).run()
                stop_abuse.set()
                for task in abuse_tasks:
                    await task
                phases.append(PhaseResult(name, abusers, load))
                say(
                    f"phase {name} done: {len(load.turns())} turns; {sequential.sessions} sequential sessions so far"
                )
            stop_sequential.set()
            await seq
            sampler.cancel()
        after = await drained_stats(http, base, before["asyncio_tasks"])
        samples.append(Sample(time.monotonic() - t0, after))
        say(f"after:  {_stats_line(after)}")
    return SoakResult(settings, before, after, samples, phases, sequential, abuse, time.monotonic() - t0)


def _stats_line(stats: dict[str, Any]) -> str:
    return ", ".join(f"{name} {stats.get(name)}" for name in STAT_FIELDS)


# --- report ---------------------------------------------------------------------------------------------


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:+.0f}{unit}" if unit == "Δ" else f"{value:.0f}"


def format_report(result: SoakResult) -> str:
    lines = [
        f"soak: {result.wall_s:.0f} s against {result.settings.url}",
        "",
        f"{'server':<16}{'before':>12}{'after':>12}{'growth':>12}{'noise':>10}  verdict",
    ]
    for g in result.growth():
        growth = "-" if g.growth is None else f"{g.growth:+.0f}"
        verdict = "ok" if g.is_within_noise else "GREW"
        lines.append(
            f"{g.name:<16}{_fmt(g.before):>12}{_fmt(g.after):>12}{growth:>12}{g.noise:>10.0f}  {verdict}"
        )
    slope = rss_slope_mib_per_10min(result.samples)
    peak = max((s.stats.get("peak_rss_kb") or 0 for s in result.samples), default=0)
    lines.append(
        f"RSS slope over the second half: {'-' if slope is None else f'{slope:+.2f}'} MiB per 10 min; "
        f"peak RSS {peak / 1024:.0f} MiB; {len(result.samples)} samples"
    )
    lines.append("")
    seq = result.sequential
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(seq.by_kind.items()))
    lines.append(f"sequential sessions: {seq.sessions} ({kinds})")
    for phase in result.phases:
        v2v = phase.voice_to_voice()
        figures = (
            "-"
            if v2v is None
            else f"n {v2v.n}, p50 {v2v.p50:.0f} ms, p95 {v2v.p95:.0f} ms, p99 {v2v.p99:.0f} ms"
        )
        lines.append(
            f"concurrent callers, {phase.name} ({phase.abusers} abusers): {len(phase.load.sessions)} sessions, "
            f"{len(phase.load.turns())} turns; voice-to-voice {figures}"
        )
    abuse = result.abuse
    if abuse.messages or abuse.failures:
        lines.append(
            f"abusers: {abuse.sessions} sessions, {abuse.messages} malformed messages, {abuse.answered} answered "
            f"with an error; failures: {dict(abuse.failures) or 'none'}"
        )
    errors = result.well_behaved_errors()
    lines.append(f"well-behaved errors: {dict(errors) if errors else 'none'}")
    lines.append("")
    for name, ok in result.verdicts().items():
        lines.append(f"{'PASS' if ok else 'FAIL'}  {name}")
    return "\n".join(lines)


def _summary_json(summary: Summary | None) -> dict[str, Any] | None:
    return None if summary is None else dataclasses.asdict(summary)


def report_json(result: SoakResult) -> dict[str, Any]:
    s = result.settings
    return {
        "url": s.url,
        "duration_s": s.duration_s,
        "wall_s": result.wall_s,
        "concurrent": s.concurrent,
        "abusers": s.abusers,
        "before": result.before,
        "after": result.after,
        "growth": [
            {"name": g.name, "before": g.before, "after": g.after, "growth": g.growth, "noise": g.noise}
            for g in result.growth()
        ],
        "rss_slope_mib_per_10min": rss_slope_mib_per_10min(result.samples),
        "samples": [{"t_s": round(x.t_s, 1), **x.stats} for x in result.samples],
        "sequential": {
            "sessions": result.sequential.sessions,
            "by_kind": dict(result.sequential.by_kind),
            "errors": dict(result.sequential.errors),
        },
        "phases": [
            {
                "name": p.name,
                "abusers": p.abusers,
                "sessions": len(p.load.sessions),
                "turns": len(p.load.turns()),
                "voice_to_voice_ms": _summary_json(p.voice_to_voice()),
                "errors": dict(p.error_counts()),
            }
            for p in result.phases
        ],
        "abuse": {
            "sessions": result.abuse.sessions,
            "messages": result.abuse.messages,
            "answered": result.abuse.answered,
            "failures": dict(result.abuse.failures),
        },
        "well_behaved_errors": dict(result.well_behaved_errors()),
        "verdicts": result.verdicts(),
        "passed": result.is_passed,
    }


# --- spawning ---------------------------------------------------------------------------------------------


def server_env(concurrent: int, abusers: int) -> dict[str, str]:
    """No connection-rate limit (thousands of sessions from one address) and room for the load."""
    return {
        "VOXGATE_IP_CONNECTIONS_PER_MINUTE": "0",
        "VOXGATE_KEY_CONNECTIONS_PER_MINUTE": "0",
        "VOXGATE_MAX_SESSIONS": str(concurrent + abusers + 8),
    }


@contextlib.asynccontextmanager
async def spawned_fake_server(env: dict[str, str], log_path: Path) -> AsyncIterator[tuple[str, int]]:
    """`python -m loadtests.soak_server` (instant fake models that keep no record, the fake
    energy VAD); yields (ws url, pid)."""
    port = free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "loadtests.soak_server",
            "--port",
            str(port),
            "--reply",
            FAKE_REPLY,
            cwd=REPO_ROOT,
            env={**os.environ, **env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as http:
            while True:
                if process.returncode is not None:
                    raise SoakError(f"the fake server exited with {process.returncode}; see {log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise SoakError(f"the fake server did not start within 60 s; see {log_path}")
                await asyncio.sleep(0.2)
        yield f"ws://127.0.0.1:{port}/v1/realtime", process.pid
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()


@contextlib.asynccontextmanager
async def server_under_test(args: argparse.Namespace) -> AsyncIterator[str]:
    log_path = Path(args.log or "soak-server.log")
    env = server_env(args.concurrent, args.abusers)
    if args.spawn == "fake":
        async with spawned_fake_server(env, log_path) as (url, _pid):
            yield url
    elif args.spawn == "real":
        try:
            async with spawned_server({**env, **parse_env_spec(args.env)}, log_path) as (url, _stats):
                yield url
        except BenchError as exc:
            raise SoakError(str(exc)) from exc
    else:
        yield args.url


# --- command line -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.soak",
        description="Soak run: leaks and errors under long use (see module doc).",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server's realtime websocket, ws://HOST:PORT/v1/realtime")
    where.add_argument(
        "--spawn", choices=("fake", "real"), help="start a server: instant fake models, or real ones"
    )
    parser.add_argument(
        "--env", default="", help="with --spawn real: 'VOXGATE_ASR=... VOXGATE_LLM=...' for the server"
    )
    parser.add_argument(
        "--duration", default="10m", help="how long the load runs: 600, 90s, 10m (default %(default)s)"
    )
    parser.add_argument(
        "--concurrent", type=int, default=4, help="callers talking in turns (default %(default)s)"
    )
    parser.add_argument(
        "--abusers", type=int, default=1, help="malformed-input clients, second half (default %(default)s)"
    )
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between stats samples")
    parser.add_argument("--rss-noise-mib", type=float, default=16.0, help="RSS growth taken as noise (MiB)")
    parser.add_argument("--corpus", default="tone", help="'tone' (a synthetic tone clip) or corpus sources")
    parser.add_argument("--silence-ms", type=int, default=300, help="end-of-turn silence the callers ask for")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log", default=None, help="spawned server's log (default soak-server.log)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    return parser


def utterances_for(corpus: str) -> list[Utterance]:
    if corpus == "tone":
        return [tone_utterance()]
    return load_corpus([s.strip() for s in corpus.split(",") if s.strip()])


async def run(args: argparse.Namespace) -> SoakResult:
    if args.concurrent < 1 or args.abusers < 0:
        raise SoakError("--concurrent must be >= 1 and --abusers >= 0")
    async with server_under_test(args) as url:
        settings = SoakSettings(
            url=url,
            duration_s=parse_duration_s(args.duration),
            concurrent=args.concurrent,
            abusers=args.abusers,
            sample_every_s=args.sample_every,
            rss_noise_mib=args.rss_noise_mib,
            utterances=utterances_for(args.corpus),
            silence_ms=args.silence_ms,
            seed=args.seed,
        )
        return await run_soak(settings, progress=lambda text: print(text, file=sys.stderr, flush=True))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = asyncio.run(run(args))
    except (SoakError, ValueError) as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    print(format_report(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report_json(result), indent=2))
    return 0 if result.is_passed else 1


if __name__ == "__main__":
    sys.exit(main())
