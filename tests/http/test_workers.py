"""Worker processes (`--workers N`): one port, one /metrics view, a dead worker replaced,
SIGTERM drains every worker; bad settings and a worker's startup failure stop the server.

The multi-process tests run `python -m loadtests.fake_server --workers 2` (instant fake
models, the energy VAD) in a subprocess; the slow one runs `voxgate serve --workers 2` with
the fast profile's recogniser and a rule-based responder.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.cli import main as voxgate
from server.http.shutdown import SHUTDOWN_REASON
from server.http.workers import Supervisor, WorkerPlan, restart_delay_s
from server.metrics import MULTIPROCESS_DIR_ENV, Metrics, MetricsSetupError
from tests.harness import RealtimeTestClient, realtime_client
from tests.http.worker_targets import exit_with

REPLICA = "replica-under-test"
START_TIMEOUT_S = 90.0  # two spawned interpreters importing the server on a shared 2-core box


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class Scrape:
    """One /metrics answer: every sample's value by name, and each live worker's sessions."""

    samples: dict[str, float]
    worker_sessions: dict[int, float]  # pid -> open sessions
    replicas: set[str]  # the `replica` label of every sample


async def scrape(http: httpx.AsyncClient, url: str) -> Scrape:
    text = (await http.get(url + "/metrics")).text
    samples: dict[str, float] = {}
    workers: dict[int, float] = {}
    replicas: set[str] = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            replicas.add(sample.labels.get("replica", "<none>"))
            if sample.name == "voxgate_worker_sessions_active":
                workers[int(sample.labels["pid"])] = sample.value
            elif not (set(sample.labels) - {"replica"}):
                samples[sample.name] = sample.value
    return Scrape(samples, workers, replicas)


def log_text(path: Path) -> str:
    return path.read_text()


async def wait_until_healthy(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    async with httpx.AsyncClient(trust_env=False) as http:
        loop = asyncio.get_running_loop()
        deadline_s = loop.time() + START_TIMEOUT_S
        while loop.time() < deadline_s:
            assert process.poll() is None, log_text(log_path)
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(url + "/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise AssertionError(f"not healthy within {START_TIMEOUT_S} s: {log_text(log_path)}")


@contextlib.asynccontextmanager
async def server_process(
    command: list[str], env: dict[str, str], log_path: Path, port: int
) -> AsyncIterator[tuple[str, subprocess.Popen[bytes]]]:
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: ASYNC220 - starting it is quick; it is waited for off the loop
            command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_until_healthy(url, process, log_path)
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()  # the workers follow their parent (they watch it)
            await asyncio.to_thread(process.wait, 10)


async def wait_for_workers(
    http: httpx.AsyncClient, url: str, count: int, without: int | None = None, timeout_s: float = 60.0
) -> Scrape:
    """The first scrape with `count` live workers, none of them `without`. A kept-alive
    connection to a worker that was killed fails once: the next request opens another."""
    loop = asyncio.get_running_loop()
    deadline_s = loop.time() + timeout_s
    seen: Scrape | None = None
    while True:
        with contextlib.suppress(httpx.TransportError):
            seen = await scrape(http, url)
            if len(seen.worker_sessions) == count and without not in seen.worker_sessions:
                return seen
        assert loop.time() < deadline_s, f"workers seen: {seen}"
        await asyncio.sleep(0.1)


async def test_two_workers_share_one_port_and_one_metrics_view_and_a_killed_worker_is_replaced(
    tmp_path: Path,
) -> None:
    port = _free_port()
    command = [sys.executable, "-m", "loadtests.fake_server", "--port", str(port), "--workers", "2"]
    env = {"VOXGATE_REPLICA_ID": REPLICA}
    log_path = tmp_path / "server.log"
    async with (
        server_process([*command, "--vad", "energy"], env, log_path, port) as (url, process),
        httpx.AsyncClient(trust_env=False) as http,
        contextlib.AsyncExitStack() as sessions,
    ):
        await wait_for_workers(http, url, 2)
        # the kernel gives each connection to one worker: open sessions until both hold some
        clients: list[RealtimeTestClient] = []
        by_pid: dict[int, float] = {}
        while len(clients) < 24 and not (len(by_pid) == 2 and all(by_pid.values())):
            client = await sessions.enter_async_context(realtime_client(url))
            await client.wait_for("session.created")
            clients.append(client)
            by_pid = (await scrape(http, url)).worker_sessions
        seen = await scrape(http, url)
        assert sorted(seen.worker_sessions.values()) != [0.0, float(len(clients))], (
            f"one worker took all {len(clients)} sessions"
        )
        assert seen.samples["voxgate_sessions_total"] == len(clients)  # counted in both workers
        assert seen.samples["voxgate_sessions_active"] == len(clients)
        assert sum(seen.worker_sessions.values()) == len(clients)
        assert seen.replicas == {REPLICA}

        # SIGKILL one worker: its sessions drop, it is replaced, the other one serves on
        killed = next(pid for pid, open_ in seen.worker_sessions.items() if open_ > 0)
        os.kill(killed, signal.SIGKILL)
        after = await wait_for_workers(http, url, 2, without=killed)
        assert after.samples["voxgate_sessions_active"] == len(clients) - seen.worker_sessions[killed]
        assert after.samples["voxgate_sessions_total"] == len(clients)  # what it served still counts
        late = await sessions.enter_async_context(realtime_client(url))
        await late.wait_for("session.created")

        # SIGTERM to the supervisor: every worker drains (an idle session: 1001 at once), then it exits
        live = [c for c in [*clients, late] if c.closed is None]
        process.send_signal(signal.SIGTERM)
        for client in live:
            await asyncio.wait_for(client.ws.wait_closed(), 30)
            assert (client.ws.close_code, client.ws.close_reason) == (1001, SHUTDOWN_REASON)
        assert await asyncio.to_thread(process.wait, 30) == 0, log_path.read_text()
    assert "Traceback" not in log_path.read_text()


@pytest.mark.slow
async def test_voxgate_serve_with_two_workers_loads_models_in_each_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    pytest.importorskip("pocketsphinx")
    port = _free_port()
    env = {
        "VOXGATE_PORT": str(port),
        "VOXGATE_WORKERS": "2",
        "VOXGATE_LLM": "rules",  # the fast profile with a plainly named rule-based responder
        "VOXGATE_VAD": "webrtc",
        "VOXGATE_LOG_LEVEL": "warning",
        "VOXGATE_REPLICA_ID": REPLICA,
    }
    log_path = tmp_path / "serve.log"
    command = [sys.executable, "-m", "server", "serve"]
    async with (
        server_process(command, env, log_path, port) as (url, process),
        httpx.AsyncClient(trust_env=False) as http,
    ):
        seen = await wait_for_workers(http, url, 2)
        assert process.pid not in seen.worker_sessions  # the supervisor serves nothing
        async with realtime_client(url, path="/v1/realtime") as client:
            await client.wait_for("session.created", timeout_s=30)
            await client.say("hello, what can you do for me today?")
            await client.wait_for("response.done", timeout_s=60)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0, log_path.read_text()
    assert "Traceback" not in log_path.read_text()


@pytest.mark.parametrize(
    ("argv", "env"), [(["serve", "--workers", "0"], {}), (["serve"], {"VOXGATE_WORKERS": "many"})]
)
def test_bad_worker_counts_are_refused_before_anything_starts(
    argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert voxgate(argv) == 2
    error = capsys.readouterr().err
    assert "invalid settings" in error and "workers" in error


def test_a_missing_model_stops_the_server_before_any_worker_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VOXGATE_ASR", "no-such-recogniser")
    spawned: list[tuple[object, ...]] = []

    def serve_with_workers(*args: object) -> int:
        spawned.append(args)
        return 0

    monkeypatch.setattr("server.cli.serve_with_workers", serve_with_workers)
    assert voxgate(["serve", "--workers", "2"]) == 2
    assert "cannot start: unknown speech-to-text backend 'no-such-recogniser'" in capsys.readouterr().err
    assert spawned == []


@contextlib.contextmanager
def listening() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock


def test_a_worker_that_fails_to_start_stops_the_supervisor_with_status_2(tmp_path: Path) -> None:
    with listening() as sock:
        supervisor = Supervisor(WorkerPlan(exit_with, (3,)), sock, 2, tmp_path, stop_timeout_s=10)
        assert supervisor.run() == 2
        assert supervisor.pids() == []


def test_workers_that_keep_dying_are_replaced_ever_more_slowly() -> None:
    assert [restart_delay_s(n) for n in range(8)] == [0.0, 0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    assert restart_delay_s(9) == restart_delay_s(10_000) == 30.0


def test_every_sample_carries_the_replica_label() -> None:
    metrics = Metrics(replica_id=REPLICA)
    metrics.session_opened()
    families = list(text_string_to_metric_families(metrics.render().decode()))
    assert {s.labels.get("replica") for f in families for s in f.samples} == {REPLICA}
    values = {s.name: s.value for f in families for s in f.samples if not s.name.endswith("_created")}
    assert values["voxgate_sessions_active"] == values["voxgate_worker_sessions_active"] == 1


def test_a_metrics_dir_set_after_prometheus_was_imported_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MULTIPROCESS_DIR_ENV, str(tmp_path))  # too late: values live in this process
    with pytest.raises(MetricsSetupError, match="before"):
        Metrics()
