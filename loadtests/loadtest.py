"""The load test: `voxgate loadtest --help` (or `voxgate-loadtest --help`, `python -m loadtests.loadtest --help`).

    voxgate loadtest --url ws://127.0.0.1:8000/v1/realtime --sessions 8 --duration 60s \\
        --ramp 10s --barge-in-rate 0.3 --target voice_to_voice_p95=500ms --out results/
    voxgate loadtest --url ws://127.0.0.1:8000/v1/realtime --sweep 1,2,4,8,16 --duration 30s
    voxgate loadtest --url ws://127.0.0.1:8000/v1/realtime --sessions 4 --duration 60s \
        --echo-db -12 --echo-delay-ms 120 --backchannel-rate 0.3

N callers (see `loadtests.load`) speak recorded and synthetic speech (the corpus, or `--audio
DIR` of WAV files with optional .txt transcripts beside them) to the server at real time in
20 ms frames for the duration; every turn is timed at the client (see `loadtests.session`).
Real rooms: `--echo-db DB --echo-delay-ms MS` mixes the echo of the reply (as the caller's
loudspeaker plays it, through a synthetic room, `--rt60`) and `--noise-db` background noise
into every microphone (`loadtests.room`); `--backchannel-rate R` says "uh-huh", "yeah", ...
over that share of the replies not talked over (`loadtests.overlays`), which should not stop
them. The summary then counts self-interruptions (replies cancelled that nobody talked over),
the backchannels' completed replies, and `backchannel_pause` (the gap a caller hears).
Before and after each step the server's `/metrics` (same host and port as --url) is scraped,
and its own per-stage histograms are printed beside the client's figures.

Output, per step: a table of p50/p90/p95/p99/max per metric (HDR histograms), the server's
view, the counts (refused and dropped sessions, failed turns, replies without audio, audio
gaps, malformed events, barge-ins) and a one-line verdict against the targets. `--sweep`
runs each session count in turn and reports the capacity: the largest count that met every
target (see `loadtests.target`). Files in --out: NAME.json (summary), NAME.csv (one row per
turn), NAME.png (latency distribution; with --sweep, NAME-sweep.png, latency vs concurrency,
and NAME-Nsessions.png per step). A progress line goes to stderr every few seconds.

The run stops by itself: at most duration + grace per step (plus a few seconds to wind
down). Only the address in --url is contacted.

Exit status: 0 when the verdict passes (with --sweep: when some count met the targets),
1 when it does not, 2 when the test cannot start (bad arguments, no corpus).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO
from urllib.parse import urlsplit

from loadtests.corpus import (
    DEFAULT_CACHE_DIR,
    HUMAN_DATA_DIR,
    CorpusUnavailable,
    Utterance,
    load_corpus,
    load_directory,
)
from loadtests.histogram import LatencyHistogram
from loadtests.load import LoadPlan, LoadSnapshot
from loadtests.overlays import load_backchannels
from loadtests.plot import PlotUnavailable, plot_distribution, plot_sweep
from loadtests.prometheus import ScrapeError, metrics_url, scrape
from loadtests.report import (
    METRIC_NAMES,
    ServerView,
    StepReport,
    format_progress,
    format_step,
    step_json,
    summarize_step,
    write_samples_csv,
)
from loadtests.room import EchoOptions, RoomOptions
from loadtests.session import SessionOptions
from loadtests.step import run_step
from loadtests.target import Capacity, Target, capacity, parse_duration_s, parse_sweep, parse_target

DEFAULT_TARGETS: Final = ("voice_to_voice_p95=500ms", "failed_turns=1%")


class LoadtestError(Exception):
    """The load test cannot start (arguments, corpus)."""


# --- running steps -------------------------------------------------------------------------------


class ProgressPrinter:
    """Prints one progress line per snapshot, with the running voice-to-voice percentiles."""

    def __init__(self, sessions: int, duration_s: float, stream: TextIO | None = None) -> None:
        self._sessions = sessions
        self._duration_s = duration_s
        self._stream = stream
        self.voice_to_voice = LatencyHistogram()
        self.lines = 0

    def __call__(self, snapshot: LoadSnapshot) -> None:
        for sample in snapshot.voice_to_voice_new:
            self.voice_to_voice.record(sample)
        stream = self._stream if self._stream is not None else sys.stderr
        print(
            format_progress(self._sessions, self._duration_s, snapshot, self.voice_to_voice),
            file=stream,
            flush=True,
        )
        self.lines += 1


@dataclass(slots=True)
class StepSettings:
    """What every step shares; `counts` are the session counts to run, in order."""

    plan: LoadPlan  # its `sessions` is replaced per step
    counts: list[int]
    targets: list[Target]
    processes: int = 1
    scrape_metrics: bool = True
    progress_every_s: float = 5.0
    settle_s: float = 3.0  # quiet time between the steps of a sweep
    progress_stream: TextIO | None = None


@dataclass(slots=True)
class LoadtestOutcome:
    steps: list[StepReport] = field(default_factory=list)
    capacity: Capacity | None = None
    problems: list[str] = field(default_factory=list)


def run_steps(
    settings: StepSettings, corpus: Sequence[Utterance], *, echo: TextIO | None = None
) -> LoadtestOutcome:
    """Each session count for the plan's duration, with /metrics scraped around each."""
    outcome = LoadtestOutcome()
    url = settings.plan.session.url
    for number, sessions in enumerate(settings.counts):
        if number and settings.settle_s > 0:
            time.sleep(settings.settle_s)
        plan = _with_sessions(settings.plan, sessions)
        scrape_url = metrics_url(url) if settings.scrape_metrics else None
        before, problem = _scrape(scrape_url)
        printer = ProgressPrinter(sessions, plan.duration_s, settings.progress_stream)
        ran = run_step(
            plan,
            corpus,
            processes=settings.processes,
            on_progress=printer,
            progress_every_s=settings.progress_every_s,
        )
        outcome.problems += ran.problems
        after, problem_after = _scrape(scrape_url) if before is not None else (None, problem)
        server = ServerView.of(after.minus(before)) if before is not None and after is not None else None
        step = summarize_step(ran.result, ran.histograms, settings.targets, server, problem or problem_after)
        outcome.steps.append(step)
        if echo is not None:
            print(format_step(step), file=echo, flush=True)
            for line in ran.problems:
                print(f"problem: {line}", file=echo, flush=True)
    if len(settings.counts) > 1:
        outcome.capacity = capacity([(step.sessions, step.is_met) for step in outcome.steps])
    return outcome


def _with_sessions(plan: LoadPlan, sessions: int) -> LoadPlan:
    return dataclasses.replace(plan, sessions=sessions, caller_ids=None)


def _scrape(url: str | None) -> tuple[Any, str | None]:
    if url is None:
        return None, "--no-metrics"
    try:
        return scrape(url), None
    except ScrapeError as exc:
        return None, str(exc)


# --- command line --------------------------------------------------------------------------------


def build_parser(prog: str = "python -m loadtests.loadtest") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Load-test a realtime voice server: N concurrent callers speaking at real time.",
        epilog="Targets: METRIC_STAT=VALUE with METRIC one of "
        + ", ".join(METRIC_NAMES)
        + "; STAT p50, p90, p95, p99, p999, max or mean; or failed_turns=1%%. "
        f"Default: {' '.join(DEFAULT_TARGETS)}.",
    )
    add = parser.add_argument
    add("--url", required=True, help="realtime websocket URL, e.g. ws://127.0.0.1:8000/v1/realtime")
    add("--sessions", type=int, default=1, help="concurrent sessions (default 1)")
    add("--duration", default="60s", help="how long each step runs (default 60s)")
    add(
        "--ramp",
        default=None,
        help="start the sessions evenly over this long (default: a fifth of the duration, at most 10s)",
    )
    add(
        "--grace",
        default="20s",
        help="after the duration, how long turns in progress may finish (default 20s)",
    )
    add(
        "--sweep",
        default=None,
        help="run these session counts in turn, e.g. 1,2,4,8,16 (overrides --sessions)",
    )
    add("--processes", type=int, default=1, help="spread the sessions over this many client processes")
    add(
        "--audio",
        type=Path,
        default=None,
        help="a directory of 16-bit WAV files (NAME.txt beside: transcript)",
    )
    add(
        "--corpus",
        default="human,synthetic",
        help="built-in corpus sources, if no --audio (default %(default)s)",
    )
    add("--barge-in-rate", type=float, default=0.0, help="share of turns talked over (default 0)")
    add(
        "--barge-in-after",
        default="300ms-900ms",
        help="reply heard before talking over it, a range (default %(default)s)",
    )
    add(
        "--pause",
        default="800ms-2s",
        help="silence between a reply and the next turn, a range (default %(default)s)",
    )
    add(
        "--echo-db",
        type=float,
        default=None,
        help="mix the reply's echo into every microphone at this level (dB)",
    )
    add("--echo-delay-ms", type=float, default=120.0, help="the echo's delay (default %(default)s)")
    add("--rt60", default="300ms", help="the echo's room reverberation time (default %(default)s; 0: none)")
    add("--noise-db", type=float, default=None, help="background noise in every microphone, dBFS RMS")
    add("--backchannel-rate", type=float, default=0.0, help="share of replies with an uh-huh over them")
    add(
        "--backchannel-after",
        default="600ms-1500ms",
        help="reply heard before the backchannel, a range (default %(default)s)",
    )
    add("--target", action="append", default=[], help="e.g. voice_to_voice_p95=500ms (repeatable)")
    add("--out", type=Path, default=Path("results"), help="directory for the JSON, CSV and PNG files")
    add("--name", default=None, help="file name stem (default loadtest-YYYYmmdd-HHMMSS)")
    add("--model", default="voxgate-cascade", help="sent as ?model= (default %(default)s)")
    add(
        "--silence-ms",
        type=int,
        default=-1,
        help="set the server VAD's silence_duration_ms (session.update); default -1 keeps the server's",
    )
    add(
        "--reply-timeout", default="10s", help="a turn with no response.done by then is a stall (default 10s)"
    )
    add("--progress-every", default="5s", help="progress line interval (default 5s)")
    add("--settle", default="3s", help="quiet time between sweep steps (default 3s)")
    add("--seed", type=int, default=0, help="seed of the callers' choices")
    add("--beta", action="store_true", help="speak the beta dialect (OpenAI-Beta: realtime=v1)")
    add("--api-key", default=os.environ.get("OPENAI_API_KEY"), help=argparse.SUPPRESS)
    add("--no-metrics", action="store_true", help="do not scrape the server's /metrics")
    add("--no-plot", action="store_true", help="do not draw PNG plots")
    add("--data-dir", type=Path, default=HUMAN_DATA_DIR, help=argparse.SUPPRESS)
    add("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help=argparse.SUPPRESS)
    return parser


def parse_range_ms(text: str) -> tuple[int, int]:
    """'300ms-900ms' or '1s' -> (low, high) in ms."""
    low, sep, high = text.partition("-")
    lo = round(parse_duration_s(low) * 1000)
    hi = round(parse_duration_s(high) * 1000) if sep else lo
    if hi < lo:
        raise ValueError(f"range {text!r} ends before it starts")
    return lo, hi


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise LoadtestError(f"--url must be a ws:// or wss:// URL with a host, not {url!r}")
    return url


def load_utterances(args: argparse.Namespace, warn: TextIO) -> list[Utterance]:
    if args.audio is not None:
        try:
            return load_directory(args.audio)
        except CorpusUnavailable as exc:
            raise LoadtestError(str(exc)) from exc
    utterances: list[Utterance] = []
    problems = []
    for source in [s.strip() for s in args.corpus.split(",") if s.strip()]:
        try:
            utterances += load_corpus([source], data_dir=args.data_dir, cache_dir=args.cache_dir)
        except (CorpusUnavailable, ValueError) as exc:
            problems.append(str(exc))
    for problem in problems:
        print(f"loadtest: corpus: {problem}", file=warn)
    if not utterances:
        raise LoadtestError("no utterance to speak: " + "; ".join(problems))
    return utterances


def settings_from_args(args: argparse.Namespace) -> StepSettings:
    """Validated settings; raises LoadtestError with a message for the user."""
    try:
        duration_s = parse_duration_s(args.duration)
        ramp_s = min(10.0, duration_s / 5) if args.ramp is None else parse_duration_s(args.ramp)
        counts = parse_sweep(args.sweep) if args.sweep else [args.sessions]
        targets = [parse_target(t, METRIC_NAMES) for t in (args.target or DEFAULT_TARGETS)]
        session = SessionOptions(
            url=check_url(args.url),
            model=args.model,
            api_key=args.api_key,
            beta=args.beta,
            silence_duration_ms=None if args.silence_ms < 0 else args.silence_ms,
            reply_timeout_s=parse_duration_s(args.reply_timeout),
        )
        plan = LoadPlan(
            session=session,
            sessions=counts[0],
            duration_s=duration_s,
            ramp_s=ramp_s,
            grace_s=parse_duration_s(args.grace),
            barge_in_rate=args.barge_in_rate,
            barge_in_after_ms=parse_range_ms(args.barge_in_after),
            pause_ms=parse_range_ms(args.pause),
            seed=args.seed,
            room=room_options(args),
            backchannel_rate=args.backchannel_rate,
            backchannel_after_ms=parse_range_ms(args.backchannel_after),
            backchannels=tuple(load_backchannels(args.cache_dir)) if args.backchannel_rate > 0 else (),
        )
        if args.processes < 1:
            raise ValueError("--processes must be at least 1")
        return StepSettings(
            plan=plan,
            counts=counts,
            targets=targets,
            processes=args.processes,
            scrape_metrics=not args.no_metrics,
            progress_every_s=parse_duration_s(args.progress_every),
            settle_s=parse_duration_s(args.settle),
        )
    except (ValueError, CorpusUnavailable) as exc:
        raise LoadtestError(str(exc)) from exc


def room_options(args: argparse.Namespace) -> RoomOptions | None:
    """The room of --echo-db, --echo-delay-ms, --rt60 and --noise-db; None if neither is set."""
    echo = None
    if args.echo_db is not None:
        echo = EchoOptions(
            delay_ms=args.echo_delay_ms, level_db=args.echo_db, rt60_s=parse_duration_s(args.rt60)
        )
    room = RoomOptions(echo=echo, noise_db=args.noise_db)
    return None if room.is_quiet else room


def machine_description() -> dict[str, Any]:
    load1, load5, load15 = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": [load1, load5, load15],
    }


@dataclass(slots=True)
class WrittenFiles:
    json: Path
    csv: Path
    plots: list[Path] = field(default_factory=list)
    plot_problem: str | None = None


def write_outputs(
    outcome: LoadtestOutcome,
    settings: StepSettings,
    out_dir: Path,
    name: str,
    config: dict[str, Any],
    plot: bool,
) -> WrittenFiles:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = WrittenFiles(json=out_dir / f"{name}.json", csv=out_dir / f"{name}.csv")
    report = {
        "version": 1,
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": config,
        "machine": machine_description(),
        "steps": [step_json(step) for step in outcome.steps],
        "capacity": None
        if outcome.capacity is None
        else {
            "sessions": outcome.capacity.sessions,
            "crossed_at": outcome.capacity.crossed_at,
            "summary": outcome.capacity.describe(),
        },
        "problems": outcome.problems,
    }
    files.json.write_text(json.dumps(report, indent=1))
    write_samples_csv(outcome.steps, files.csv)
    if not plot:
        return files
    try:
        if len(outcome.steps) == 1:
            files.plots.append(plot_distribution(outcome.steps[0], out_dir / f"{name}.png", settings.targets))
        else:
            files.plots.append(
                plot_sweep(outcome.steps, out_dir / f"{name}-sweep.png", settings.targets, outcome.capacity)
            )
            for step in outcome.steps:
                path = out_dir / f"{name}-{step.sessions}sessions.png"
                files.plots.append(plot_distribution(step, path, settings.targets))
    except PlotUnavailable as exc:
        files.plot_problem = str(exc)
    return files


def main(argv: Sequence[str] | None = None, prog: str = "python -m loadtests.loadtest") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        settings = settings_from_args(args)
        corpus = load_utterances(args, sys.stderr)
    except LoadtestError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    name = args.name or datetime.datetime.now().strftime("loadtest-%Y%m%d-%H%M%S")
    plan = settings.plan
    print(
        f"loadtest: {args.url}, sessions {','.join(map(str, settings.counts))}, {plan.duration_s:g} s each "
        f"(ramp {plan.ramp_s:g} s, grace {plan.grace_s:g} s), {len(corpus)} utterances, "
        f"barge-in rate {plan.barge_in_rate:g}, backchannel rate {plan.backchannel_rate:g}, "
        f"echo {'none' if plan.room is None or plan.room.echo is None else f'{plan.room.echo.level_db:g} dB'}, "
        f"{settings.processes} process(es)",
        file=sys.stderr,
        flush=True,
    )
    outcome = run_steps(settings, corpus, echo=sys.stdout)
    config = {
        "argv": list(argv) if argv is not None else sys.argv[1:],
        "url": args.url,
        "counts": settings.counts,
        "duration_s": plan.duration_s,
        "ramp_s": plan.ramp_s,
        "grace_s": plan.grace_s,
        "barge_in_rate": plan.barge_in_rate,
        "backchannel_rate": plan.backchannel_rate,
        "room": None if plan.room is None else dataclasses.asdict(plan.room),
        "processes": settings.processes,
        "targets": [t.label + "=" + t.format_limit() for t in settings.targets],
        "utterances": [u.name for u in corpus],
    }
    files = write_outputs(outcome, settings, args.out, name, config, plot=not args.no_plot)
    if outcome.capacity is not None:
        print(f"capacity: {outcome.capacity.describe()}")
    print(f"raw samples: {files.csv}; summary: {files.json}")
    if files.plots:
        print("plots: " + ", ".join(str(p) for p in files.plots))
    if files.plot_problem:
        print(f"plots: none ({files.plot_problem})")
    if outcome.capacity is not None:
        return 0 if outcome.capacity.sessions is not None else 1
    return 0 if outcome.steps and outcome.steps[-1].is_met else 1


def script() -> int:
    """The `voxgate-loadtest` console script."""
    return main(prog="voxgate-loadtest")


if __name__ == "__main__":
    # `voxgate loadtest` runs this module as a program of its own and names itself here
    sys.exit(main(prog=os.environ.get("VOXGATE_LOADTEST_PROG", "python -m loadtests.loadtest")))
