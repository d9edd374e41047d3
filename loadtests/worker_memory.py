"""Idle memory of `voxgate serve --workers N`: RSS and PSS of every process of the server.

    python -m loadtests.worker_memory --workers 1,2 --spawn "VOXGATE_PROFILE=fast" \\
        --out results/worker-memory-fast.json

For each N: start the server (`python -m server serve`, VOXGATE_WORKERS=N plus `--spawn`),
wait until its /metrics shows N started workers and then `--settle-s`, and read each process
of its tree: VmRSS (/proc/PID/status: every resident page it maps, shared ones included) and
Pss (/proc/PID/smaps_rollup: each shared page divided among the processes mapping it, so the
PSS of the tree adds up to what the tree really costs the machine). Processes are reported by
role: the supervisor (N > 1; with N = 1 the server process itself is the one worker), the
workers, their children (the Silero VAD process, PocketSphinx decoders) and multiprocessing's
resource tracker. No session is opened: this is memory after startup.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from loadtests.bench_latency import (
    BenchError,
    child_pids,
    command_name,
    parse_env_spec,
    read_proc_status_kb,
    spawned_server,
)
from loadtests.prometheus import metrics_url, parse_metrics

WORKERS_GAUGE = "voxgate_worker_sessions_active"


@dataclass(frozen=True, slots=True)
class ProcessMemory:
    pid: int
    parent: int
    role: str  # supervisor, worker, worker child, supervisor child, resource tracker
    command: str  # the module it runs (`-m NAME`), or its program
    rss_kb: int
    pss_kb: int | None  # None: smaps_rollup unreadable


def read_pss_kb(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return None


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def tree_memory(root: int, workers: int) -> list[ProcessMemory]:
    rows = []
    for pid in [root, *child_pids(root)]:
        parent = _parent(pid)
        if pid == root:
            role = "supervisor" if workers > 1 else "worker"
        elif "resource_tracker" in _cmdline(pid):
            role = "resource tracker"
        elif parent == root and "multiprocessing.spawn" in _cmdline(pid):
            role = "worker"
        elif parent == root:
            role = "supervisor child" if workers > 1 else "worker child"
        else:
            role = "worker child"
        rss_kb = read_proc_status_kb(pid, "VmRSS") or 0
        rows.append(ProcessMemory(pid, parent, role, command_name(pid), rss_kb, read_pss_kb(pid)))
    return rows


async def _wait_for_workers(ws_url: str, workers: int, timeout_s: float) -> None:
    url = metrics_url(ws_url)
    deadline_s = time.monotonic() + timeout_s
    async with httpx.AsyncClient(trust_env=False, timeout=5.0) as http:
        while time.monotonic() < deadline_s:
            gauges = parse_metrics((await http.get(url)).text).gauges
            if sum(1 for key in gauges if key.split("{")[0] == WORKERS_GAUGE) >= workers:
                return
            await asyncio.sleep(0.5)
    raise BenchError(f"{workers} workers did not start within {timeout_s:g} s")


async def measure(env: dict[str, str], workers: int, settle_s: float, log_path: Path) -> dict[str, Any]:
    spawn_env = {**env, "VOXGATE_WORKERS": str(workers)}
    started_s = time.monotonic()
    async with spawned_server(spawn_env, log_path, startup_timeout_s=600.0) as (url, stats):
        await _wait_for_workers(url, workers, timeout_s=600.0)
        ready_s = time.monotonic() - started_s
        await asyncio.sleep(settle_s)
        rows = tree_memory(stats.pid, workers)
    return {
        "workers": workers,
        "env": spawn_env,
        "ready_s": ready_s,
        "processes": [asdict(row) for row in rows],
        "total_rss_kb": sum(row.rss_kb for row in rows),
        "total_pss_kb": sum(row.pss_kb or 0 for row in rows),
    }


def format_report(results: Sequence[dict[str, Any]]) -> str:
    def mib(kb: float | None) -> str:
        return "?" if kb is None else f"{kb / 1024:.0f}"

    lines = ["workers | role | command | pid | RSS MiB | PSS MiB"]
    for result in results:
        for row in result["processes"]:
            lines.append(
                f"{result['workers']} | {row['role']} | {row['command']} | {row['pid']} | {mib(row['rss_kb'])}"
                f" | {mib(row['pss_kb'])}"
            )
        lines.append(
            f"{result['workers']} | TOTAL (ready after {result['ready_s']:.0f} s) | | | "
            f"{mib(result['total_rss_kb'])} | {mib(result['total_pss_kb'])}"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.worker_memory", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated (default 1,2)")
    parser.add_argument("--spawn", default="", help='server environment, e.g. "VOXGATE_PROFILE=quality"')
    parser.add_argument("--settle-s", type=float, default=5.0, help="wait after the workers started")
    parser.add_argument("--out", type=Path, default=Path("results/worker-memory.json"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        counts = [int(n) for n in args.workers.split(",") if n.strip()]
    except ValueError:
        print(f"--workers takes counts like 1,2, not {args.workers!r}", file=sys.stderr)
        return 2
    if not counts or min(counts) < 1:
        print("--workers needs counts of at least 1", file=sys.stderr)
        return 2
    try:
        env = parse_env_spec(args.spawn)
        results = [
            asyncio.run(
                measure(env, n, args.settle_s, args.out.with_name(f"{args.out.stem}-w{n}.server.log"))
            )
            for n in counts
        ]
    except BenchError as exc:
        print(f"worker_memory: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(format_report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
