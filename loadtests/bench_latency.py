"""Voice-to-voice latency benchmark: `python -m loadtests.bench_latency --help`.

Speaks each corpus utterance to a realtime server at real time (see `loadtests.session`),
sequentially in one session (or one session per utterance with `--session-per-utterance`),
then prints a table of latency percentiles (ms, from the end of the user's speech), the word
error rate of the server's user transcripts per corpus source, barge-in figures and error
counts, and writes every raw sample to a JSON file.

    python -m loadtests.bench_latency --url ws://127.0.0.1:8000/v1/realtime --corpus human
    python -m loadtests.bench_latency --spawn "VOXGATE_LLM=rules" --corpus human,synthetic \\
        --repeat 2 --barge-in --out results/latency.json
    python -m loadtests.bench_latency --spawn "" --corpus pauses,human,synthetic \\
        --turn-detection semantic_vad --eagerness auto --out results/semantic.json

Turn detection: `--silence-ms N` (default 300) sets server VAD's silence by `session.update`,
`--turn-detection semantic_vad [--eagerness E]` asks for semantic VAD instead, and
`--silence-ms -1` without `--turn-detection` sends no update (the server's own settings). The
report counts, per corpus source, the utterances the server cut into several turns: answers
into a pause of the caller (the "pauses" source holds one in every utterance).

With `--spawn "ENV=VALUE ..."` it starts `python -m server serve` itself on a free port with
those environment variables, waits for /healthz, runs, reads the server's peak RSS (VmHWM in
/proc/PID/status, and that of its child processes) and stops it with SIGTERM.

Exit status: 0 when every turn was measured without error, 1 when errors were counted (or no
reply was measured), 2 when the benchmark could not start (corpus, server).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import random
import shlex
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx

from loadtests.corpus import DEFAULT_CACHE_DIR, HUMAN_DATA_DIR, CorpusUnavailable, Utterance, load_corpus
from loadtests.recorder import TurnResult
from loadtests.session import (
    EAGERNESS_LEVELS,
    TURN_DETECTION_TYPES,
    BargeInPlan,
    Eagerness,
    SessionOptions,
    SessionResult,
    TurnDetectionType,
    TurnPlan,
    run_session,
)
from loadtests.stats import Summary, summarize
from loadtests.wer import WordErrors, word_errors

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SILENCE_MS = 300  # server VAD's silence_duration_ms unless --silence-ms says otherwise

TURN_METRICS: dict[str, Callable[[TurnResult], float | None]] = {
    "voice_to_voice_ms": lambda t: t.voice_to_voice_ms,
    "speech_started_ms": lambda t: t.speech_started_ms if t.role == "turn" else None,
    "speech_stopped_ms": lambda t: t.speech_stopped_ms,
    "user_transcript_ms": lambda t: t.transcript_ms,
    "response_created_ms": lambda t: t.response_created_ms,
    "response_done_ms": lambda t: t.response_done_ms,
    "reply_audio_ms": lambda t: t.reply_audio_ms if t.response_status is not None else None,
    "audio_stall_ms": lambda t: t.audio_stall_ms if t.reply_audio_ms > 0 else None,
    "barge_in_speech_started_ms": lambda t: t.speech_started_ms if t.role == "interruption" else None,
    "barge_in_reaction_ms": lambda t: t.barge_in.reaction_ms if t.barge_in else None,
    "audio_after_interrupt_ms": lambda t: t.barge_in.audio_after_interrupt_ms if t.barge_in else None,
}


class BenchError(Exception):
    """The benchmark cannot run (no corpus, the server would not start)."""


# --- spawning the server ------------------------------------------------------------------------


@dataclass(slots=True)
class ServerStats:
    """The spawned server process, read just before it was stopped."""

    pid: int
    env: dict[str, str]
    log_path: str
    peak_rss_kb: int | None = None  # VmHWM of the server process
    rss_kb: int | None = None  # VmRSS at the end
    children_peak_rss_kb: dict[str, int] = field(default_factory=dict)  # "pid command" -> VmHWM
    exit_code: int | None = None


def parse_env_spec(spec: str) -> dict[str, str]:
    """'A=1 B="two words"' -> {"A": "1", "B": "two words"}; anything else is a usage error."""
    env: dict[str, str] = {}
    for word in shlex.split(spec):
        name, sep, value = word.partition("=")
        if not sep or not name.isidentifier():
            raise BenchError(f"--spawn takes NAME=VALUE pairs, not {word!r}")
        env[name] = value
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def read_proc_status_kb(pid: int, field_name: str) -> int | None:
    """A `kB` field (VmHWM, VmRSS) of /proc/PID/status, or None if unreadable."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    return None


def child_pids(pid: int) -> list[int]:
    """All descendants of `pid` (Linux /proc/PID/task/TID/children)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found += [child, *child_pids(child)]
    return found


def command_name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in argv if a]
    module = words[words.index("-m") + 1] if "-m" in words[:-1] else (words[0] if words else "?")
    return module


CHECKOUT_KEY: Final = "VOXGATE_BENCH_CHECKOUT"


def split_checkout(env: dict[str, str]) -> tuple[dict[str, str], Path]:
    """A spawn spec's environment, less `VOXGATE_BENCH_CHECKOUT=DIR`, and the checkout the
    server runs from: DIR (another commit's worktree, for a paired A/B of two code versions
    in one run) or this repository."""
    rest = {k: v for k, v in env.items() if k != CHECKOUT_KEY}
    if CHECKOUT_KEY not in env:
        return rest, REPO_ROOT
    checkout = Path(env[CHECKOUT_KEY]).resolve()
    if not (checkout / "server" / "__main__.py").is_file():
        raise BenchError(
            f"{CHECKOUT_KEY}={env[CHECKOUT_KEY]}: not a Voxgate checkout (no server/__main__.py)"
        )
    return rest, checkout


@contextlib.asynccontextmanager
async def spawned_server(
    env: dict[str, str], log_path: Path, startup_timeout_s: float = 180.0
) -> AsyncIterator[tuple[str, ServerStats]]:
    """Run `python -m server serve` on a free loopback port; yields (ws url, stats). The
    server runs from this repository, or from `VOXGATE_BENCH_CHECKOUT` in `env`
    (`split_checkout`).

    The stats' memory fields are filled in on exit, just before the process gets SIGTERM
    (then SIGKILL if it has not exited within 10 s).
    """
    env, checkout = split_checkout(env)
    port = free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "server",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            cwd=checkout,
            env={**os.environ, **env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
        )
    stats = ServerStats(pid=process.pid, env=env, log_path=str(log_path))
    try:
        await _wait_healthy(process, f"http://127.0.0.1:{port}/healthz", log_path, startup_timeout_s)
        yield f"ws://127.0.0.1:{port}/v1/realtime", stats
    finally:
        stats.peak_rss_kb = read_proc_status_kb(process.pid, "VmHWM")
        stats.rss_kb = read_proc_status_kb(process.pid, "VmRSS")
        for child in child_pids(process.pid):
            peak = read_proc_status_kb(child, "VmHWM")
            if peak is not None:
                stats.children_peak_rss_kb[f"{child} {command_name(child)}"] = peak
        stats.exit_code = await _stop(process)


async def _wait_healthy(
    process: asyncio.subprocess.Process, url: str, log_path: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                tail = _log_tail(log_path)
                raise BenchError(f"the server exited with status {process.returncode}:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise BenchError(f"the server was not healthy within {timeout_s:g} s; see {log_path}")


def _log_tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


async def _stop(process: asyncio.subprocess.Process) -> int | None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await asyncio.wait_for(process.wait(), 5)
    return process.returncode


# --- planning and running -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TurnDetectionChoice:
    """The `SessionOptions` fields that say what `session.update` asks for."""

    turn_detection: TurnDetectionType | None
    eagerness: Eagerness | None
    silence_duration_ms: int | None


def turn_detection_options(
    turn_detection: str | None, eagerness: str | None, silence_ms: int | None
) -> TurnDetectionChoice:
    """What --turn-detection, --eagerness and --silence-ms (None where not given) ask for;
    raises BenchError on a combination that means nothing.

    No --turn-detection: server VAD with --silence-ms (default 300), or with -1 no update at
    all. server_vad: the same, but -1 still asks for server VAD, at the server's silence.
    semantic_vad: eagerness if given (else the server's); it takes no silence.
    """
    kind = next((t for t in TURN_DETECTION_TYPES if t == turn_detection), None)
    level = next((e for e in EAGERNESS_LEVELS if e == eagerness), None)
    if kind is None and turn_detection is not None:
        raise BenchError(
            f"--turn-detection takes {' or '.join(TURN_DETECTION_TYPES)}, not {turn_detection!r}"
        )
    if level is None and eagerness is not None:
        raise BenchError(f"--eagerness takes {', '.join(EAGERNESS_LEVELS)}, not {eagerness!r}")
    if kind == "semantic_vad":
        if silence_ms is not None:
            raise BenchError("--silence-ms sets server_vad's silence; semantic_vad has none")
        return TurnDetectionChoice(kind, level, None)
    if level is not None:
        raise BenchError("--eagerness needs --turn-detection semantic_vad")
    silence = DEFAULT_SILENCE_MS if silence_ms is None else silence_ms
    return TurnDetectionChoice(kind, None, None if silence < 0 else silence)


def plan_turns(
    corpus: Sequence[Utterance],
    repeat: int,
    *,
    barge_in_probability: float,
    barge_in_after_ms: int,
    rng: random.Random,
) -> list[TurnPlan]:
    """Each utterance `repeat` times, in corpus order; a turn is talked over with the given
    probability, by another utterance of the corpus drawn at random."""
    plans = []
    for _ in range(repeat):
        for utterance in corpus:
            barge_in = None
            if barge_in_probability > 0 and rng.random() < barge_in_probability:
                others = [u for u in corpus if u is not utterance] or list(corpus)
                barge_in = BargeInPlan(rng.choice(others), barge_in_after_ms)
            plans.append(TurnPlan(utterance, barge_in))
    return plans


def session_deadline_s(plans: Sequence[TurnPlan], options: SessionOptions) -> float:
    """Generous: every turn may take its full reply timeout, plus a minute."""
    per_turn = options.reply_timeout_s + options.pause_ms / 1000 + options.transcript_grace_s
    total = 60.0
    for plan in plans:
        total += plan.utterance.duration_ms / 1000 + per_turn
        if plan.barge_in is not None:
            total += plan.barge_in.utterance.duration_ms / 1000 + per_turn
    return total


async def run_plans(
    options: SessionOptions, plans: Sequence[TurnPlan], session_per_utterance: bool
) -> list[SessionResult]:
    groups = [[plan] for plan in plans] if session_per_utterance else [list(plans)]
    results = []
    for group in groups:
        group_options = dataclasses.replace(options, deadline_s=session_deadline_s(group, options))
        results.append(await run_session(group_options, group))
    return results


# --- reporting ----------------------------------------------------------------------------------


def all_turns(sessions: Sequence[SessionResult]) -> list[TurnResult]:
    return [turn for session in sessions for turn in session.turns]


def summarize_metrics(sessions: Sequence[SessionResult]) -> dict[str, Summary | None]:
    turns = all_turns(sessions)
    summaries = {name: summarize(get(turn) for turn in turns) for name, get in TURN_METRICS.items()}
    summaries["connect_ms"] = summarize(session.connect_ms for session in sessions)
    return summaries


@dataclass(frozen=True, slots=True)
class SourceWer:
    turns: int
    transcribed: int  # turns with a user transcript; the rest are not in the WER
    errors: WordErrors

    @property
    def rate(self) -> float:
        return self.errors.rate


def wer_by_source(turns: Sequence[TurnResult]) -> dict[str, SourceWer]:
    """Pooled WER of the server's user transcripts, per corpus source."""
    result: dict[str, SourceWer] = {}
    for source in sorted({t.source for t in turns}):
        mine = [t for t in turns if t.source == source]
        errors = WordErrors()
        transcribed = 0
        for turn in mine:
            if turn.user_transcript is not None:
                transcribed += 1
                errors += word_errors(turn.reference, turn.user_transcript)
        result[source] = SourceWer(len(mine), transcribed, errors)
    return result


def barge_in_counts(turns: Sequence[TurnResult]) -> dict[str, int]:
    planned = [t.barge_in for t in turns if t.barge_in is not None]
    return {
        "planned": len(planned),
        "sent": sum(b.sent for b in planned),
        "reply_ended_first": sum(not b.sent for b in planned),
        "cancelled_turn_detected": sum(b.sent and b.is_cancelled_by_turn for b in planned),
        "not_cancelled": sum(b.sent and not b.is_cancelled_by_turn for b in planned),
    }


@dataclass(frozen=True, slots=True)
class SourceCuts:
    """Utterances of one corpus source, and those the server cut into several turns."""

    turns: int
    cut: int  # the server committed a turn inside the utterance: it answered into a pause

    @property
    def rate(self) -> float:
        return self.cut / self.turns if self.turns else 0.0


def premature_by_source(turns: Sequence[TurnResult]) -> dict[str, SourceCuts]:
    """Per corpus source (in the order they first come): turns, and turns with commits > 1."""
    result: dict[str, SourceCuts] = {}
    for source in dict.fromkeys(t.source for t in turns):
        mine = [t for t in turns if t.source == source]
        result[source] = SourceCuts(len(mine), sum(t.commits > 1 for t in mine))
    return result


def describe_turn_detection(detection: dict[str, Any] | None) -> str:
    """`server_vad, silence 300 ms`, `semantic_vad, eagerness auto`, or `none`."""
    if detection is None:
        return "none"
    words = [str(detection.get("type", "server_vad"))]
    if "eagerness" in detection:
        words.append(f"eagerness {detection['eagerness']}")
    if "silence_duration_ms" in detection and words[0] == "server_vad":
        words.append(f"silence {detection['silence_duration_ms']} ms")
    return ", ".join(words)


def turn_detection_line(sessions: Sequence[SessionResult]) -> str:
    """What the sessions asked for and what the server announced, flagging a different type."""
    sent = {describe_turn_detection(s.turn_detection_sent) for s in sessions if s.turn_detection_sent}
    announced = {describe_turn_detection(s.turn_detection) for s in sessions if s.turn_detection}
    line = "turn detection: sent " + ("; ".join(sorted(sent)) or "nothing (the server's own)")
    line += "; the server announced " + ("; ".join(sorted(announced)) or "nothing")
    differs = any(
        s.turn_detection_sent is not None
        and s.turn_detection is not None
        and s.turn_detection_sent.get("type") != s.turn_detection.get("type", "server_vad")
        for s in sessions
    )
    return line + (" (NOT the type asked for)" if differs else "")


def error_counts(sessions: Sequence[SessionResult]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for session in sessions:
        for error in session.errors:
            counts[error.kind if error.code is None else f"{error.kind}:{error.code}"] += 1
    return dict(counts)


def format_report(sessions: Sequence[SessionResult], server: ServerStats | None) -> str:
    turns = all_turns(sessions)
    lines = [f"{'metric':<28}{'n':>5}{'p50':>9}{'p90':>9}{'p95':>9}{'max':>9}"]
    for name, summary in summarize_metrics(sessions).items():
        if summary is None:
            lines.append(f"{name:<28}{0:>5}{'-':>9}{'-':>9}{'-':>9}{'-':>9}")
        else:
            s = summary
            lines.append(f"{name:<28}{s.n:>5}{s.p50:>9.0f}{s.p90:>9.0f}{s.p95:>9.0f}{s.max:>9.0f}")
    lines.append("")
    lines.append("user transcript WER (pooled over words)")
    for source, w in wer_by_source(turns).items():
        e = w.errors
        lines.append(
            f"  {source:<10} WER {w.rate:6.1%}  ({e.substitutions} sub, {e.deletions} del, "
            f"{e.insertions} ins / {e.reference_words} words; {w.transcribed}/{w.turns} turns transcribed)"
        )
    counts = barge_in_counts(turns)
    if counts["planned"]:
        lines.append("")
        lines.append(
            "barge-in: {planned} planned, {sent} sent, {cancelled_turn_detected} cancelled (turn_detected), "
            "{not_cancelled} not cancelled, {reply_ended_first} replies ended first".format(**counts)
        )
    statuses = Counter(t.response_status or "none" for t in turns)
    splits = sum(t.commits > 1 for t in turns)
    lines.append("")
    lines.append(
        f"turns: {len(turns)} in {len(sessions)} session(s); response status "
        + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
        + f"; utterances cut in several turns by the server: {splits}"
    )
    cuts = premature_by_source(turns)
    if cuts:
        lines.append(
            "premature answers (server committed a turn inside the utterance): "
            + ", ".join(f"{source} {c.cut}/{c.turns} ({c.rate:.1%})" for source, c in cuts.items())
        )
    lines.append(turn_detection_line(sessions))
    late = max((s.max_frame_lateness_ms for s in sessions), default=0.0)
    lines.append(f"client health: microphone at most {late:.0f} ms late (above 20 ms, this client lagged)")
    errors = error_counts(sessions)
    lines.append("errors: " + (", ".join(f"{k} {v}" for k, v in sorted(errors.items())) or "none"))
    if server is not None:
        children = sum(server.children_peak_rss_kb.values())
        lines.append(
            f"server: peak RSS {_mib(server.peak_rss_kb)} (VmHWM), at the end {_mib(server.rss_kb)}; "
            f"child processes' peak RSS {children / 1024:.0f} MiB in {len(server.children_peak_rss_kb)}; "
            f"log {server.log_path}"
        )
    return "\n".join(lines)


def _mib(kb: int | None) -> str:
    return "?" if kb is None else f"{kb / 1024:.0f} MiB"


def report_json(
    config: dict[str, Any], sessions: Sequence[SessionResult], server: ServerStats | None
) -> dict[str, Any]:
    turns = []
    for index, session in enumerate(sessions):
        for turn in session.turns:
            row = dataclasses.asdict(turn)
            row["session"] = index
            row["wer"] = (
                None
                if turn.user_transcript is None
                else dataclasses.asdict(word_errors(turn.reference, turn.user_transcript))
            )
            turns.append(row)
    return {
        "version": 1,
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": config,
        "server": None if server is None else dataclasses.asdict(server),
        "summary": {
            name: None if s is None else dataclasses.asdict(s)
            for name, s in summarize_metrics(sessions).items()
        },
        "wer": {
            source: {
                "rate": w.rate,
                "turns": w.turns,
                "transcribed": w.transcribed,
                **dataclasses.asdict(w.errors),
            }
            for source, w in wer_by_source(all_turns(sessions)).items()
        },
        "barge_in": barge_in_counts(all_turns(sessions)),
        "premature_answers": {
            source: {"turns": c.turns, "cut": c.cut, "rate": c.rate}
            for source, c in premature_by_source(all_turns(sessions)).items()
        },
        "errors": error_counts(sessions),
        "sessions": [{k: v for k, v in dataclasses.asdict(s).items() if k != "turns"} for s in sessions],
        "turns": turns,
    }


# --- command line -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench_latency",
        description="Voice-to-voice latency of a realtime server, over its websocket, at real time.",
    )
    parser.add_argument("--url", default="ws://127.0.0.1:8000/v1/realtime", help="realtime websocket url")
    parser.add_argument("--model", default="voxgate-cascade", help="sent as ?model= (default %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--beta", action="store_true", help="speak the beta dialect (OpenAI-Beta: realtime=v1)"
    )
    parser.add_argument(
        "--corpus", default="human", help="comma-separated: human,synthetic,pauses (default human)"
    )
    parser.add_argument("--limit", type=int, default=None, help="use only the first N utterances")
    parser.add_argument("--repeat", type=int, default=1, help="speak each utterance N times (default 1)")
    parser.add_argument(
        "--turn-detection",
        choices=TURN_DETECTION_TYPES,
        default=None,
        help="turn detection to ask for by session.update (default server_vad with --silence-ms)",
    )
    parser.add_argument(
        "--eagerness",
        choices=EAGERNESS_LEVELS,
        default=None,
        help="semantic_vad's eagerness (only with --turn-detection semantic_vad; default the server's)",
    )
    parser.add_argument(
        "--silence-ms",
        type=int,
        default=None,
        help=f"server VAD silence_duration_ms, set by session.update (default {DEFAULT_SILENCE_MS}); "
        "-1 keeps the server's, and without --turn-detection sends no update at all",
    )
    parser.add_argument(
        "--pause-ms", type=int, default=1000, help="silence between a reply and the next turn"
    )
    parser.add_argument("--barge-in", action="store_true", help="talk over replies (see --barge-in-*)")
    parser.add_argument("--barge-in-probability", type=float, default=1.0, help="share of turns talked over")
    parser.add_argument(
        "--barge-in-after-ms", type=int, default=600, help="reply heard before talking over it"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for barge-in choices")
    parser.add_argument(
        "--session-per-utterance", action="store_true", help="a fresh session for every utterance"
    )
    parser.add_argument(
        "--reply-timeout-s", type=float, default=30.0, help="wait for a reply at most this long"
    )
    parser.add_argument("--out", type=Path, default=Path("results/latency.json"), help="raw samples (JSON)")
    parser.add_argument("--data-dir", type=Path, default=HUMAN_DATA_DIR, help="pocketsphinx-testdata folder")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="synthetic corpus cache")
    parser.add_argument(
        "--spawn",
        metavar="ENV",
        default=None,
        help='start the server with these variables, e.g. "VOXGATE_LLM=rules" ("" for none); ignores --url',
    )
    parser.add_argument("--spawn-timeout-s", type=float, default=180.0, help="wait this long for /healthz")
    return parser


@dataclass(slots=True)
class BenchOutcome:
    config: dict[str, Any]
    sessions: list[SessionResult]
    server: ServerStats | None


async def run(args: argparse.Namespace) -> BenchOutcome:
    """Load the corpus, (spawn the server,) run the sessions. Raises BenchError if it cannot."""
    detection = turn_detection_options(args.turn_detection, args.eagerness, args.silence_ms)
    try:
        corpus = load_corpus(
            [s.strip() for s in args.corpus.split(",") if s.strip()],
            data_dir=args.data_dir,
            cache_dir=args.cache_dir,
        )
    except (CorpusUnavailable, ValueError) as exc:
        raise BenchError(str(exc)) from exc
    if args.limit is not None:
        corpus = corpus[: args.limit]
    plans = plan_turns(
        corpus,
        args.repeat,
        barge_in_probability=args.barge_in_probability if args.barge_in else 0.0,
        barge_in_after_ms=args.barge_in_after_ms,
        rng=random.Random(args.seed),
    )
    options = SessionOptions(
        url=args.url,
        model=args.model,
        api_key=args.api_key,
        beta=args.beta,
        turn_detection=detection.turn_detection,
        silence_duration_ms=detection.silence_duration_ms,
        eagerness=detection.eagerness,
        pause_ms=args.pause_ms,
        reply_timeout_s=args.reply_timeout_s,
    )
    config: dict[str, Any] = {
        "url": args.url,
        "model": args.model,
        "beta": args.beta,
        "corpus": args.corpus,
        "utterances": [u.name for u in corpus],
        "repeat": args.repeat,
        "silence_ms": args.silence_ms,  # as given: None (the default), -1 (the server's) or ms
        "turn_detection": args.turn_detection,
        "eagerness": args.eagerness,
        "silence_duration_ms": detection.silence_duration_ms,  # asked for; None: not set
        "pause_ms": args.pause_ms,
        "barge_in": args.barge_in,
        "barge_in_probability": args.barge_in_probability,
        "barge_in_after_ms": args.barge_in_after_ms,
        "seed": args.seed,
        "session_per_utterance": args.session_per_utterance,
        "spawn": args.spawn,
    }
    if args.spawn is None:
        return BenchOutcome(config, await run_plans(options, plans, args.session_per_utterance), None)
    env = parse_env_spec(args.spawn)
    log_path = args.out.with_name(args.out.stem + ".server.log")
    async with spawned_server(env, log_path, args.spawn_timeout_s) as (url, server):
        config["url"] = url
        options = dataclasses.replace(options, url=url)
        sessions = await run_plans(options, plans, args.session_per_utterance)
    return BenchOutcome(config, sessions, server)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        outcome = asyncio.run(run(args))
    except BenchError as exc:
        print(f"bench_latency: {exc}", file=sys.stderr)
        return 2
    print(format_report(outcome.sessions, outcome.server))
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report_json(outcome.config, outcome.sessions, outcome.server), indent=1))
    print(f"raw samples: {out}")
    measured = any(t.voice_to_voice_ms is not None for t in all_turns(outcome.sessions))
    return 0 if measured and not error_counts(outcome.sessions) else 1


if __name__ == "__main__":
    sys.exit(main())
