"""What a soak run watches for leaks: this process's memory, open files and asyncio tasks.

`process_stats(sessions)` reads /proc/self (Linux; fields are None where it is unreadable) and
counts the running loop's tasks. It never blocks for long: two small /proc reads and a
directory listing. Served at `/debug/stats` (routes.py); `/healthz` stays a plain liveness check.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PROC_SELF = Path("/proc/self")


@dataclass(frozen=True, slots=True)
class ProcessStats:
    rss_kb: int | None  # VmRSS: resident memory now
    peak_rss_kb: int | None  # VmHWM: the highest it has been
    open_fds: int | None  # entries of /proc/self/fd (sockets, files, pipes, eventfds)
    threads: int | None
    asyncio_tasks: int  # tasks of the running loop, this request's own included
    sessions: int  # live websocket sessions (realtime and Twilio)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def status_kb(status_text: str, field_name: str) -> int | None:
    """A `kB` (or count) field of a /proc/PID/status text, e.g. VmRSS, VmHWM, Threads."""
    for line in status_text.splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    return None


def open_fd_count(proc: Path = PROC_SELF) -> int | None:
    try:
        return len(os.listdir(proc / "fd"))
    except OSError:
        return None


def process_stats(sessions: int, proc: Path = PROC_SELF) -> ProcessStats:
    """This process's figures; call from the event loop (the task count is the running loop's)."""
    try:
        status = (proc / "status").read_text()
    except OSError:
        status = ""
    return ProcessStats(
        rss_kb=status_kb(status, "VmRSS"),
        peak_rss_kb=status_kb(status, "VmHWM"),
        open_fds=open_fd_count(proc),
        threads=status_kb(status, "Threads"),
        asyncio_tasks=len(asyncio.all_tasks()),
        sessions=sessions,
    )
