"""One load step (N sessions for a duration), in this process or fanned out to K processes.

`run_step(plan, corpus, processes=K, on_progress=...)` returns a `StepOutcome`: the merged
`LoadResult` (every session of every process), one merged HDR histogram per metric, and the
problems met (a worker that crashed or had to be terminated).

With K > 1 the callers are dealt out round-robin (worker w runs callers w, w+K, ...), so each
worker ramps up over the whole ramp. Each worker is a fresh interpreter (multiprocessing
"spawn"), runs its share with `loadtests.load.Load`, sends a progress snapshot every
`progress_every_s`, and at the end its sessions and its histograms, HDR-encoded; the parent
merges the histograms (exactly: HDR histograms add) and the sessions. The parent waits at most
duration + grace + `WORKER_MARGIN_S` and terminates a worker still running then.

`on_progress` is called every `progress_every_s` with the snapshot of all callers together;
its `voice_to_voice_new` holds the samples measured since the previous call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import queue as queue_module
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any, Final

from loadtests.corpus import Utterance
from loadtests.histogram import LatencyHistogram, merge
from loadtests.load import HARD_MARGIN_S, Load, LoadPlan, LoadResult, LoadSnapshot
from loadtests.report import METRIC_NAMES, histograms_of

WORKER_MARGIN_S: Final = HARD_MARGIN_S + 30.0  # spawning and importing, then sending results
ProgressCallback = Callable[[LoadSnapshot], None]


@dataclass(slots=True)
class StepOutcome:
    result: LoadResult
    histograms: dict[str, LatencyHistogram]
    problems: list[str] = field(default_factory=list)


def run_step(
    plan: LoadPlan,
    corpus: Sequence[Utterance],
    *,
    processes: int = 1,
    on_progress: ProgressCallback | None = None,
    progress_every_s: float = 5.0,
) -> StepOutcome:
    """Run the plan; see the module docstring. Blocks (it runs its own event loops)."""
    if processes <= 1 or plan.sessions <= 1:
        result = asyncio.run(_run_here(plan, corpus, on_progress, progress_every_s))
        return StepOutcome(result, histograms_of(result.sessions))
    return _run_in_processes(plan, corpus, min(processes, plan.sessions), on_progress, progress_every_s)


async def _run_here(
    plan: LoadPlan,
    corpus: Sequence[Utterance],
    on_progress: ProgressCallback | None,
    every_s: float,
) -> LoadResult:
    load = Load(plan, corpus)

    async def report() -> None:
        while True:
            await asyncio.sleep(every_s)
            if on_progress is not None:
                on_progress(load.snapshot())

    async with asyncio.TaskGroup() as tasks:
        reporter = tasks.create_task(report(), name="load-progress")
        try:
            result = await load.run()
        finally:
            reporter.cancel()
    return result


# --- worker processes ---------------------------------------------------------------------------


def _worker_main(index: int, plan: LoadPlan, corpus: list[Utterance], channel: Any, every_s: float) -> None:
    """A worker process: run the share of callers in `plan`, report on `channel`."""
    try:

        def send_progress(snapshot: LoadSnapshot) -> None:
            channel.put(("progress", index, snapshot))

        result = asyncio.run(_run_here(plan, corpus, send_progress, every_s))
        encoded = {name: (h.encode(), h.clamped) for name, h in histograms_of(result.sessions).items()}
        channel.put(("result", index, (result, encoded)))
    except BaseException:
        channel.put(("failed", index, traceback.format_exc()))
        raise


def merge_results(plan: LoadPlan, results: Sequence[LoadResult]) -> LoadResult:
    merged = LoadResult(plan)
    for result in results:
        merged.sessions += result.sessions
        merged.callers += result.callers
        merged.wall_s = max(merged.wall_s, result.wall_s)
        merged.client_cpu_s += result.client_cpu_s
        merged.hard_stopped = merged.hard_stopped or result.hard_stopped
    merged.sessions.sort(key=lambda s: (s.caller, s.attempt))
    return merged


def merge_snapshots(snapshots: Sequence[LoadSnapshot], new_samples: Sequence[float]) -> LoadSnapshot:
    return LoadSnapshot(
        elapsed_s=max((s.elapsed_s for s in snapshots), default=0.0),
        callers=sum(s.callers for s in snapshots),
        sessions=sum(s.sessions for s in snapshots),
        sessions_up=sum(s.sessions_up for s in snapshots),
        refused=sum(s.refused for s in snapshots),
        dropped=sum(s.dropped for s in snapshots),
        turns=sum(s.turns for s in snapshots),
        failed_turns=sum(s.failed_turns for s in snapshots),
        errors=sum(s.errors for s in snapshots),
        max_lateness_ms=max((s.max_lateness_ms for s in snapshots), default=0.0),
        voice_to_voice_new=tuple(new_samples),
    )


def _run_in_processes(
    plan: LoadPlan,
    corpus: Sequence[Utterance],
    processes: int,
    on_progress: ProgressCallback | None,
    every_s: float,
) -> StepOutcome:
    context = multiprocessing.get_context("spawn")
    channel: Any = context.Queue()
    workers: list[BaseProcess] = []
    for index in range(processes):
        share = dataclasses.replace(plan, caller_ids=range(index, plan.sessions, processes))
        process = context.Process(
            target=_worker_main,
            args=(index, share, list(corpus), channel, every_s),
            name=f"voxgate-loadtest-{index}",
            daemon=True,
        )
        process.start()
        workers.append(process)
    deadline = time.monotonic() + plan.duration_s + plan.grace_s + WORKER_MARGIN_S
    latest: dict[int, LoadSnapshot] = {}
    new_samples: list[float] = []
    results: dict[int, tuple[LoadResult, dict[str, tuple[bytes, int]]]] = {}
    problems: list[str] = []
    finished: set[int] = set()
    next_progress = time.monotonic() + every_s
    while len(finished) < processes and time.monotonic() < deadline:
        try:
            kind, index, payload = channel.get(timeout=0.25)
        except queue_module.Empty:
            for index, worker in enumerate(workers):
                if index not in finished and worker.exitcode not in (None, 0):
                    problems.append(f"worker {index} exited with status {worker.exitcode} and no result")
                    finished.add(index)
        else:
            if kind == "progress":
                latest[index] = payload
                new_samples += payload.voice_to_voice_new
            elif kind == "result":
                results[index] = payload
                finished.add(index)
            else:
                problems.append(f"worker {index} failed:\n{payload}")
                finished.add(index)
        if on_progress is not None and time.monotonic() >= next_progress and latest:
            on_progress(merge_snapshots(list(latest.values()), new_samples))
            new_samples = []
            next_progress += every_s
    for index, worker in enumerate(workers):
        if index not in finished:
            problems.append(f"worker {index} did not finish in time: terminated, its sessions are lost")
        if worker.is_alive():
            worker.terminate()
        worker.join(5)
        if worker.is_alive():
            worker.kill()
            worker.join(5)
    with contextlib.suppress(Exception):
        channel.close()
    merged = merge_results(plan, [results[i][0] for i in sorted(results)])
    histograms = {
        name: merge(LatencyHistogram.decode(*encoded[name]) for _, encoded in results.values())
        for name in METRIC_NAMES
    }
    return StepOutcome(merged, histograms, problems)
