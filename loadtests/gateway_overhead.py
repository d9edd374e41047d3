"""What the gateway itself costs: `python -m loadtests.gateway_overhead --help`.

    python -m loadtests.gateway_overhead --sessions 50 --duration 60s --out results/

Starts Voxgate with INSTANT FAKE MODELS (`loadtests.fake_server`: FakeAsr, FakeLlm, FakeTts,
zero delays; the real WebRTC VAD unless `--vad energy`) as a subprocess on a free loopback
port, then runs the load test against it twice: a baseline of one session, then `--sessions`
sessions (50 by default). The models do no work, so what is measured is the gateway.

Added latency: the load test's `endpoint_to_audio` metric, per turn: from the sending of the
input frame that completed the server's end-of-turn silence (its `speech_stopped`
`audio_end_ms` + `silence_duration_ms`; the turn cannot end before that frame arrives) to the
first reply audio received. With an instant model that is the gateway's own time after the
turn's final deadline, plus loopback and the client. Reported at one session and at N, with
their difference and ratio; the target (`--target-ms`, 5 ms) applies to its p99 at N.
Voice-to-voice (end of speech in the audio -> first reply audio) is shown too: it also holds
the silence that ends the turn and the VAD's view of where speech ended.

The server's own view is set beside it: its `voxgate_voice_to_voice_seconds` mean less the
silence duration is what passed on the server's clock between the frame completing the
silence reaching its turn-taker and the first audio leaving it. The rest of the client's
figure is spent before the server's clock starts (network, the client's event loop, audio the
server holds back before its VAD sees it).

CPU: utime + stime of the server process and all its descendants (/proc/PID/stat, every
thread; with `--workers N`, the supervisor, its N worker processes and their VAD processes)
over each step, divided by the wall time (cores used) and by the session-seconds served (cores
per session). The busiest thread is looked for in every one of those processes.
The client's CPU and the microphone's lateness are reported too: a lagging client inflates
every figure, and on a small box client and server share the cores.

`--server inprocess` runs the server in a thread of this process instead (its CPU read from
/proc/self/task/TID/stat); client and server then share one GIL, which inflates latency: use
it for tests, not figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx

from loadtests.corpus import CorpusUnavailable, Utterance, load_corpus, load_directory
from loadtests.fake_server import REPLY, VADS, vad_name
from loadtests.histogram import LatencyHistogram, LatencySummary
from loadtests.load import LoadPlan
from loadtests.loadtest import StepSettings, machine_description, run_steps
from loadtests.plot import (
    CURVE_PERCENTILES,
    PERCENTILE_TICKS,
    PlotUnavailable,
    agg_figure,
    stretched_percentile,
)
from loadtests.report import StepReport, format_step, step_json
from loadtests.session import SessionOptions
from loadtests.target import parse_duration_s, parse_target

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
METRIC: Final = "endpoint_to_audio"
CLOCK_TICKS_PER_S: Final = os.sysconf("SC_CLK_TCK")


class OverheadError(Exception):
    """The benchmark cannot run (the server would not start, no corpus)."""


def cpu_seconds(pid: int, tid: int | None = None) -> float | None:
    """utime + stime of a process (all its threads) or of one of its threads, in seconds."""
    path = Path(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat")
    try:
        text = path.read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S  # fields 14 and 15 of stat(5)


# --- the server under test -------------------------------------------------------------------------


@dataclass(slots=True)
class ServerUnderTest:
    url: str
    pid: int
    tid: int | None  # the server thread, when in-process
    description: str

    def cpu_s(self) -> float | None:
        """The server's CPU time; a subprocess server's includes its descendants (worker
        processes, VAD processes), which do the server's work too."""
        own = cpu_seconds(self.pid, self.tid)
        if own is None or self.tid is not None:
            return own
        return own + sum(cpu_seconds(child) or 0.0 for child in descendant_pids(self.pid))


def child_pids(pid: int) -> list[int]:
    """The live children of `pid` (from /proc/*/stat's parent field)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # field 4 of stat(5): the parent's pid
            children.append(int(entry.name))
    return children


def descendant_pids(pid: int) -> list[int]:
    """The live children of `pid`, their children, and so on."""
    found: list[int] = []
    parents = [pid]
    while parents:
        children = [child for parent in parents for child in child_pids(parent)]
        found += children
        parents = children
    return found


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_healthy(base_url: str, timeout_s: float, alive: Any) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if not alive():
                raise OverheadError("the fake-model server exited during startup")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{base_url}/healthz").status_code == 200:
                    return
            time.sleep(0.1)
    raise OverheadError(f"the fake-model server was not healthy within {timeout_s:g} s")


@contextlib.contextmanager
def subprocess_server(
    vad: str | None,
    log_path: Path,
    reply: str = REPLY,
    timeout_s: float = 60.0,
    vad_in_loop: bool = False,
    workers: int = 1,
) -> Iterator[ServerUnderTest]:
    """`python -m loadtests.fake_server` on a free loopback port; SIGTERM on exit."""
    port = _free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    vad_args = ([] if vad is None else ["--vad", vad]) + (["--vad-in-loop"] if vad_in_loop else [])
    vad_args += ["--workers", str(workers)] if workers > 1 else []
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "loadtests.fake_server", "--port", str(port), "--reply", reply, *vad_args],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", timeout_s, lambda: process.poll() is None)
        described = f"subprocess pid {process.pid}" + (f", {workers} workers" if workers > 1 else "")
        yield ServerUnderTest(f"ws://127.0.0.1:{port}/v1/realtime", process.pid, None, described)
    finally:
        process.terminate()
        try:
            process.wait(30)  # workers: the supervisor waits for each to drain
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@contextlib.contextmanager
def inprocess_server(
    vad: str | None, reply: str = REPLY, timeout_s: float = 30.0, vad_in_loop: bool = False
) -> Iterator[ServerUnderTest]:
    """The fake-model server on its own event loop in a thread of this process."""
    import uvicorn

    from loadtests.fake_server import fake_model_app

    port = _free_port()
    config = uvicorn.Config(
        fake_model_app(vad, reply, vad_process=not vad_in_loop),
        host="127.0.0.1",
        port=port,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    native_id: list[int] = []

    def serve() -> None:
        native_id.append(threading.get_native_id())
        asyncio.run(server.serve())

    thread = threading.Thread(target=serve, name="fake-model-server", daemon=True)
    thread.start()
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", timeout_s, thread.is_alive)
        yield ServerUnderTest(
            f"ws://127.0.0.1:{port}/v1/realtime",
            os.getpid(),
            native_id[0],
            "in-process thread (shares the GIL)",
        )
    finally:
        server.should_exit = True
        thread.join(10)


# --- measuring --------------------------------------------------------------------------------------


@dataclass(slots=True)
class MeasuredStep:
    report: StepReport
    server_cpu_s: float | None
    session_seconds: float  # summed over the sessions that connected
    busiest_thread_cpu_s: float | None = None  # the server's busiest thread (its event loop)

    @property
    def busiest_thread_cores(self) -> float | None:
        wall = self.report.result.wall_s
        return None if self.busiest_thread_cpu_s is None or wall <= 0 else self.busiest_thread_cpu_s / wall

    @property
    def cores(self) -> float | None:
        wall = self.report.result.wall_s
        return None if self.server_cpu_s is None or wall <= 0 else self.server_cpu_s / wall

    @property
    def cores_per_session(self) -> float | None:
        if self.server_cpu_s is None or self.session_seconds <= 0:
            return None
        return self.server_cpu_s / self.session_seconds

    def added(self) -> LatencySummary | None:
        return self.report.summaries.get(METRIC)


def session_seconds(report: StepReport) -> float:
    total = 0.0
    for session in report.result.sessions:
        if session.result.connect_ms is not None and session.ended_s is not None:
            total += session.ended_s - session.started_s
    return total


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of a process, by thread id."""
    threads: dict[int, float] = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            used = cpu_seconds(pid, int(task.name))
            if used is not None:
                threads[int(task.name)] = used
    return threads


def tree_thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of a process and of its descendants, by thread id."""
    threads: dict[int, float] = {}
    for member in [pid, *descendant_pids(pid)]:
        threads.update(thread_cpu_seconds(member))
    return threads


def measure(server: ServerUnderTest, settings: StepSettings, corpus: Sequence[Utterance]) -> MeasuredStep:
    threads_before = tree_thread_cpu_seconds(server.pid) if server.tid is None else {}
    before = server.cpu_s()
    outcome = run_steps(settings, corpus)
    after = server.cpu_s()
    threads_after = tree_thread_cpu_seconds(server.pid) if server.tid is None else {}
    report = outcome.steps[0]
    cpu = None if before is None or after is None else after - before
    busiest = max((used - threads_before.get(tid, 0.0) for tid, used in threads_after.items()), default=None)
    return MeasuredStep(report, cpu, session_seconds(report), busiest)


@dataclass(slots=True)
class OverheadResult:
    server: str
    sessions: int
    target_ms: float
    baseline: MeasuredStep
    loaded: MeasuredStep
    limits: list[str] = field(default_factory=list)

    @property
    def is_met(self) -> bool:
        added = self.loaded.added()
        return added is not None and added.p99 <= self.target_ms


def silence_ms(step: MeasuredStep) -> int | None:
    """The end-of-turn silence the sessions ran with (the server's default, as announced)."""
    known = [s.result.silence_duration_ms for s in step.report.result.sessions]
    values = [v for v in known if v is not None]
    return max(set(values), key=values.count) if values else None


def server_side_ms(step: MeasuredStep) -> float | None:
    """The server's own voice-to-voice mean, less the silence that ends a turn."""
    server = step.report.server
    silence = silence_ms(step)
    if server is None or silence is None:
        return None
    for row in server.stages:
        if row.name == "voxgate_voice_to_voice_seconds" and row.mean_ms is not None:
            return row.mean_ms - silence
    return None


def diagnose(result: OverheadResult) -> list[str]:
    """What limits the figure, from what was measured (no guessing beyond it)."""
    notes = []
    base, loaded = result.baseline, result.loaded
    base_added, load_added = base.added(), loaded.added()
    to_stopped, to_audio = added_parts(base)
    if to_stopped is not None and to_audio is not None:
        server_ms = server_side_ms(base)
        notes.append(
            f"one session: {to_stopped.p50:.1f} ms (p50) pass from sending the frame that completes the "
            f"end-of-turn silence to receiving speech_stopped (reading, classifying and answering that "
            f"frame, and the loopback round trip); then {to_audio.p50:.1f} ms to the first reply audio"
            + (
                ""
                if server_ms is None
                else f"; the server's own clock (/metrics) saw {server_ms:.1f} ms (mean)"
            )
        )
    if base_added is not None and load_added is not None:
        notes.append(
            f"load adds {load_added.p50 - base_added.p50:+.1f} ms at p50 and {load_added.p99 - base_added.p99:+.1f} ms "
            f"at p99 over one session (x{load_added.p99 / max(base_added.p99, 1e-9):.2f} at p99)"
        )
        server_ms = server_side_ms(loaded)
        if server_ms is not None:
            notes.append(f"{result.sessions} sessions: the server's own clock saw {server_ms:.1f} ms (mean)")
    cores = loaded.cores
    if cores is not None:
        busiest = loaded.busiest_thread_cores
        notes.append(
            f"server CPU {cores:.2f} cores at {result.sessions} sessions"
            + ("" if busiest is None else f", its busiest thread (the event loop) {busiest:.2f} of a core")
            + (
                ": one thread runs every session, so it saturates near 1.0"
                if (busiest or cores) > 0.7
                else ""
            )
        )
    counts = loaded.report.counts
    client = loaded.report.result
    client_share = client.client_cpu_s / client.wall_s if client.wall_s > 0 else 0.0
    if counts.max_lateness_ms > 20 or client_share > 0.8:
        notes.append(
            f"the client lagged: microphone up to {counts.max_lateness_ms:.0f} ms late, its CPU {client_share:.0%} "
            "of a core: its timestamps are late too, and on a small box it competes with the server for the cores"
        )
    load1 = os.getloadavg()[0]
    cpus = os.cpu_count() or 1
    if load1 > cpus * 0.8:
        notes.append(
            f"the machine is busy: load average {load1:.1f} on {cpus} CPUs (other work shares the cores)"
        )
    return notes


def added_parts(step: MeasuredStep) -> tuple[LatencySummary | None, LatencySummary | None]:
    """The added latency split at `speech_stopped`: (deadline frame sent -> speech_stopped
    received: how late the server ended the turn; speech_stopped -> first reply audio: how
    long it took to release the reply), per turn."""
    to_stopped, to_audio = LatencyHistogram(), LatencyHistogram()
    for turn in step.report.result.turns():
        added, v2v, stopped = turn.endpoint_to_audio_ms, turn.voice_to_voice_ms, turn.speech_stopped_ms
        if added is None or v2v is None or stopped is None:
            continue
        to_stopped.record(added - (v2v - stopped))
        to_audio.record(v2v - stopped)
    return to_stopped.summary(), to_audio.summary()


def _row(label: str, s: LatencySummary | None) -> str:
    if s is None:
        return f"{label:<44}{'no samples':>10}"
    return f"{label:<44}{s.n:>6}{s.p50:>9.1f}{s.p90:>9.1f}{s.p99:>9.1f}{s.max:>9.1f}"


def format_result(result: OverheadResult) -> str:
    b, loaded = result.baseline, result.loaded
    n = result.sessions

    def cpu_line(label: str, step: MeasuredStep) -> str:
        if step.cores is None or step.cores_per_session is None:
            return f"  {label}: server CPU not readable"
        turns = step.report.counts.turns
        per_turn = (
            ""
            if not turns or step.server_cpu_s is None
            else f", {1000 * step.server_cpu_s / turns:.1f} ms per turn"
        )
        return (
            f"  {label}: server {step.server_cpu_s:.2f} s CPU in {step.report.result.wall_s:.1f} s = "
            f"{step.cores:.3f} cores; {100 * step.cores_per_session:.2f} % of a core per session{per_turn}"
        )

    lines = [
        f"gateway overhead: Voxgate with instant fake models (FakeAsr, FakeLlm, FakeTts; zero delays), {result.server}",
        f"{'latency (ms)':<44}{'n':>6}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}",
        _row("added (endpoint_to_audio), 1 session", b.added()),
        _row("  deadline frame sent -> speech_stopped", added_parts(b)[0]),
        _row("  speech_stopped -> first audio", added_parts(b)[1]),
        _row(f"added (endpoint_to_audio), {n} sessions", loaded.added()),
        _row("  deadline frame sent -> speech_stopped", added_parts(loaded)[0]),
        _row("  speech_stopped -> first audio", added_parts(loaded)[1]),
        _row("voice_to_voice, 1 session", b.report.summaries.get("voice_to_voice")),
        _row(f"voice_to_voice, {n} sessions", loaded.report.summaries.get("voice_to_voice")),
        "CPU:",
        cpu_line("1 session", b),
        cpu_line(f"{n} sessions", loaded),
    ]
    added = loaded.added()
    verdict = "MET" if result.is_met else "NOT MET"
    shown = "no samples" if added is None else f"{added.p99:.1f} ms"
    lines.append(f"target: added p99 <= {result.target_ms:g} ms at {n} sessions: {verdict} ({shown})")
    lines += [f"- {note}" for note in result.limits]
    return "\n".join(lines)


def plot_overhead(result: OverheadResult, path: Path) -> Path:
    figure = agg_figure(11, 4.5)
    curves, cpu = figure.subplots(1, 2, width_ratios=[2, 1])
    for label, step in (("1 session", result.baseline), (f"{result.sessions} sessions", result.loaded)):
        hist = step.report.histograms.get(METRIC)
        if hist is None or hist.count == 0:
            continue
        curves.plot(
            [stretched_percentile(p) for p in CURVE_PERCENTILES],
            hist.percentiles(CURVE_PERCENTILES),
            label=f"{label} (n={hist.count})",
        )
    curves.axhline(
        result.target_ms, color="tab:red", linestyle="--", label=f"target p99 {result.target_ms:g} ms"
    )
    curves.set_xticks(
        [stretched_percentile(p) for p in PERCENTILE_TICKS], [f"{p:g}%" for p in PERCENTILE_TICKS]
    )
    curves.set_xlabel("percentile")
    curves.set_ylabel("added latency (ms)")
    curves.set_title("gateway: end-of-turn deadline -> first reply audio (instant fake models)")
    curves.grid(True, alpha=0.3)
    curves.legend(fontsize="small")
    labels, values = [], []
    for label, step in (("1", result.baseline), (str(result.sessions), result.loaded)):
        if step.cores_per_session is not None:
            labels.append(label)
            values.append(100 * step.cores_per_session)
    cpu.bar(labels, values, color="tab:purple", alpha=0.7)
    cpu.set_xlabel("concurrent sessions")
    cpu.set_ylabel("server CPU per session (% of a core)")
    cpu.set_title("server CPU per session")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


# --- command line ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.gateway_overhead",
        description="Latency and CPU the gateway adds, measured against instant fake models.",
    )
    add = parser.add_argument
    add("--sessions", type=int, default=50, help="concurrent sessions of the loaded step (default 50)")
    add("--duration", default="60s", help="loaded step duration (default 60s)")
    add("--baseline-duration", default="45s", help="one-session baseline duration (default 45s)")
    add("--ramp", default="10s", help="ramp of the loaded step (default 10s)")
    add("--processes", type=int, default=1, help="client processes for the loaded step")
    add("--barge-in-rate", type=float, default=0.0, help="share of turns talked over (default 0)")
    add("--vad", choices=VADS, default=None, help="the server's VAD (default: the server's default)")
    add(
        "--vad-in-loop",
        action="store_true",
        help="Silero's batches on the event loop, not in a worker process",
    )
    add("--server", choices=("subprocess", "inprocess"), default="subprocess", help="how to run the server")
    add(
        "--workers",
        type=int,
        default=1,
        help="server worker processes sharing the port (fake_server --workers; subprocess only)",
    )
    add("--target-ms", type=float, default=5.0, help="added p99 target (default 5)")
    add("--corpus", default="human,synthetic", help="corpus sources (default %(default)s)")
    add("--reply", default=REPLY, help="what the fake language model answers (50 ms of audio a character)")
    add("--audio", type=Path, default=None, help="a directory of WAV files to speak instead of the corpus")
    add("--out", type=Path, default=Path("results"), help="directory for the JSON and PNG")
    add("--name", default="gateway-overhead", help="file name stem (default %(default)s)")
    add("--progress-every", default="10s", help="progress line interval")
    return parser


def run(args: argparse.Namespace) -> OverheadResult:
    try:
        if args.audio is not None:
            corpus = load_directory(args.audio)
        else:
            corpus = load_corpus([s.strip() for s in args.corpus.split(",") if s.strip()])
    except (CorpusUnavailable, ValueError) as exc:
        raise OverheadError(str(exc)) from exc
    targets = [parse_target(f"{METRIC}_p99={args.target_ms}ms", [METRIC, "voice_to_voice"])]
    log_path = args.out / f"{args.name}.server.log"
    if args.workers < 1 or (args.workers > 1 and args.server != "subprocess"):
        raise OverheadError("--workers must be at least 1, and more than 1 needs --server subprocess")
    servers = (
        subprocess_server(args.vad, log_path, args.reply, vad_in_loop=args.vad_in_loop, workers=args.workers)
        if args.server == "subprocess"
        else inprocess_server(args.vad, args.reply, vad_in_loop=args.vad_in_loop)
    )
    with servers as server:
        session = SessionOptions(url=server.url, reply_timeout_s=10.0)  # the server's own turn settings
        plan = LoadPlan(
            session=session,
            sessions=1,
            duration_s=parse_duration_s(args.baseline_duration),
            ramp_s=0.0,
            grace_s=15.0,
            barge_in_rate=args.barge_in_rate,
        )
        every = parse_duration_s(args.progress_every)
        print(
            f"gateway overhead: baseline, 1 session, {plan.duration_s:g} s ({server.description})",
            file=sys.stderr,
        )
        baseline = measure(server, StepSettings(plan, [1], targets, progress_every_s=every), corpus)
        time.sleep(2.0)
        loaded_plan = dataclasses.replace(
            plan,
            sessions=args.sessions,
            duration_s=parse_duration_s(args.duration),
            ramp_s=parse_duration_s(args.ramp),
        )
        print(f"gateway overhead: {args.sessions} sessions, {loaded_plan.duration_s:g} s", file=sys.stderr)
        loaded = measure(
            server,
            StepSettings(
                loaded_plan, [args.sessions], targets, processes=args.processes, progress_every_s=every
            ),
            corpus,
        )
    result = OverheadResult(
        f"{vad_name(args.vad)} VAD"
        + (" (batches on the event loop)" if args.vad_in_loop and vad_name(args.vad) == "silero" else "")
        + f", server {server.description}",
        args.sessions,
        args.target_ms,
        baseline,
        loaded,
    )
    result.limits = diagnose(result)
    return result


def result_json(result: OverheadResult, args: argparse.Namespace) -> dict[str, Any]:
    def step(m: MeasuredStep) -> dict[str, Any]:
        return {
            **step_json(m.report),
            "server_cpu_s": m.server_cpu_s,
            "server_cores": m.cores,
            "server_cores_per_session": m.cores_per_session,
            "server_busiest_thread_cores": m.busiest_thread_cores,
            "session_seconds": m.session_seconds,
            "server_side_ms": server_side_ms(m),
        }

    added = result.loaded.added()
    return {
        "version": 1,
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": "instant fake models: FakeAsr, FakeLlm, FakeTts (zero delays)",
        "server": result.server,
        "workers": args.workers,
        "argv": sys.argv[1:],
        "machine": machine_description(),
        "target_ms": result.target_ms,
        "added_p99_ms": None if added is None else added.p99,
        "met": result.is_met,
        "limits": result.limits,
        "baseline": step(result.baseline),
        "loaded": step(result.loaded),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except OverheadError as exc:
        print(f"gateway_overhead: {exc}", file=sys.stderr)
        return 2
    print(format_step(result.loaded.report))
    print()
    print(format_result(result))
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"{args.name}.json"
    json_path.write_text(json.dumps(result_json(result, args), indent=1))
    print(f"summary: {json_path}")
    try:
        print(f"plot: {plot_overhead(result, args.out / f'{args.name}.png')}")
    except PlotUnavailable as exc:
        print(f"plot: none ({exc})")
    return 0 if result.is_met else 1


if __name__ == "__main__":
    sys.exit(main())
