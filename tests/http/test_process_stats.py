"""/debug/stats: the figures a soak run watches (RSS, open fds, asyncio tasks, live sessions)."""

from __future__ import annotations

from pathlib import Path

import httpx

from server.http.process_stats import process_stats, status_kb
from tests.harness import realtime_client

STATUS = "Name:\tpython\nVmHWM:\t  81234 kB\nVmRSS:\t  80000 kB\nThreads:\t6\n"


def test_status_fields() -> None:
    assert status_kb(STATUS, "VmRSS") == 80_000
    assert status_kb(STATUS, "VmHWM") == 81_234
    assert status_kb(STATUS, "Threads") == 6
    assert status_kb(STATUS, "VmSwap") is None


async def test_stats_of_an_unreadable_proc_are_none(tmp_path: Path) -> None:
    stats = process_stats(sessions=2, proc=tmp_path / "missing")
    assert (stats.rss_kb, stats.open_fds, stats.threads) == (None, None, None)
    assert stats.asyncio_tasks >= 1 and stats.sessions == 2


async def test_debug_stats_counts_a_live_session(fake_server: str) -> None:
    async with httpx.AsyncClient() as http:
        idle = (await http.get(fake_server + "/debug/stats")).json()
        async with realtime_client(fake_server) as client:
            await client.wait_for("session.created")
            busy = (await http.get(fake_server + "/debug/stats")).json()
    assert idle["sessions"] == 0 and busy["sessions"] == 1
    assert busy["asyncio_tasks"] > idle["asyncio_tasks"]  # the session's reader, writer, timer
    assert idle["rss_kb"] > 0 and idle["open_fds"] > 0 and idle["peak_rss_kb"] >= idle["rss_kb"]
