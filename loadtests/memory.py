"""Server memory per profile and per additional session (issue 3's memory targets).

Spawns `python -m server serve` with the given environment, then:
1. one session speaks `--turns` utterances (models loaded, every code path warm);
2. `--sessions` sessions speak the same utterances at once;
and reads the resident set size (VmRSS, and the peak VmHWM) of the server process and of its
child processes (PocketSphinx decoders) after each step. Per additional session =
(RSS after step 2 - RSS after step 1) / (sessions - 1), for the server process alone and for
the whole process tree.

    python -m loadtests.memory --spawn "" --sessions 8 --turns 2 --out results/memory-fast.json
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.bench_latency import (
    BenchError,
    child_pids,
    parse_env_spec,
    read_proc_status_kb,
    session_deadline_s,
    spawned_server,
)
from loadtests.corpus import DEFAULT_CACHE_DIR, HUMAN_DATA_DIR, CorpusUnavailable, load_corpus
from loadtests.session import SessionOptions, SessionResult, TurnPlan, run_session


@dataclass(frozen=True, slots=True)
class MemorySample:
    """Resident memory (KiB) of the server process and of its children, at one moment."""

    server_rss_kb: int
    server_peak_kb: int
    children_rss_kb: int
    children: int

    @property
    def total_rss_kb(self) -> int:
        return self.server_rss_kb + self.children_rss_kb


def sample(pid: int) -> MemorySample:
    kids = child_pids(pid)
    return MemorySample(
        server_rss_kb=read_proc_status_kb(pid, "VmRSS") or 0,
        server_peak_kb=read_proc_status_kb(pid, "VmHWM") or 0,
        children_rss_kb=sum(read_proc_status_kb(k, "VmRSS") or 0 for k in kids),
        children=len(kids),
    )


def per_session_kb(one: MemorySample, many: MemorySample, sessions: int) -> dict[str, float]:
    """Growth per additional session, from one session to `sessions` at once."""
    extra = max(1, sessions - 1)
    return {
        "server_kb": (many.server_rss_kb - one.server_rss_kb) / extra,
        "total_kb": (many.total_rss_kb - one.total_rss_kb) / extra,
    }


def _errors(results: Sequence[SessionResult]) -> list[str]:
    return [f"{e.kind}: {e.message}" for r in results for e in r.errors]


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    try:
        corpus = load_corpus(["human"], data_dir=args.data_dir, cache_dir=args.cache_dir)
    except (CorpusUnavailable, ValueError) as exc:
        raise BenchError(str(exc)) from exc
    plans = [TurnPlan(u) for u in corpus[: args.turns]]
    log_path = args.out.with_name(args.out.stem + ".server.log")
    async with spawned_server(parse_env_spec(args.spawn), log_path) as (url, stats):
        options = SessionOptions(url=url, reply_timeout_s=args.reply_timeout_s)
        options = dataclasses.replace(options, deadline_s=session_deadline_s(plans, options))
        idle = sample(stats.pid)
        first = await run_session(options, plans)
        one = sample(stats.pid)
        results = await asyncio.gather(*(run_session(options, plans) for _ in range(args.sessions)))
        many = sample(stats.pid)
    errors = _errors([first, *results])
    return {
        "spawn": args.spawn,
        "sessions": args.sessions,
        "turns_per_session": len(plans),
        "after_start": dataclasses.asdict(idle),
        "after_one_session": dataclasses.asdict(one),
        "after_concurrent_sessions": dataclasses.asdict(many),
        "per_additional_session": per_session_kb(one, many, args.sessions),
        "turns_answered": sum(
            1 for r in [first, *results] for t in r.turns if t.voice_to_voice_ms is not None
        ),
        "errors": errors,
    }


def format_report(result: dict[str, Any]) -> str:
    def mib(kb: float) -> str:
        return f"{kb / 1024:.0f} MiB"

    rows = [
        ("after start", result["after_start"]),
        ("after 1 session", result["after_one_session"]),
        (f"after {result['sessions']} at once", result["after_concurrent_sessions"]),
    ]
    lines = [f"server spawned with {result['spawn']!r}", "moment | server RSS | decoder processes | total"]
    for name, s in rows:
        lines.append(
            f"{name} | {mib(s['server_rss_kb'])} | {s['children']} using {mib(s['children_rss_kb'])}"
            f" | {mib(s['server_rss_kb'] + s['children_rss_kb'])}"
        )
    per = result["per_additional_session"]
    lines.append(
        f"per additional session: server {per['server_kb'] / 1024:.1f} MiB,"
        f" whole tree {per['total_kb'] / 1024:.1f} MiB"
    )
    lines.append(f"turns answered: {result['turns_answered']}, errors: {len(result['errors'])}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtests.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--spawn", default="", help='server environment, e.g. "VOXGATE_PROFILE=quality"')
    parser.add_argument("--sessions", type=int, default=8, help="sessions at once in step 2")
    parser.add_argument("--turns", type=int, default=2, help="utterances each session speaks")
    parser.add_argument("--reply-timeout-s", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=Path("results/memory.json"))
    parser.add_argument("--data-dir", type=Path, default=HUMAN_DATA_DIR)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.sessions < 2 or args.turns < 1:
        print("--sessions must be at least 2 and --turns at least 1", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(measure(args))
    except BenchError as exc:
        print(f"memory: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(format_report(result))
    return 0 if not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
