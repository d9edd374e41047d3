"""Fake-model Voxgate replicas behind a real nginx, configured by deploy/nginx/voxgate.conf.

Used by tests/deploy/test_nginx.py and `python -m loadtests.nginx_path`. Call order:

    async with fake_replica(workdir, "a") as a, fake_replica(workdir, "b") as b:
        async with nginx_balancer(workdir, [a.address, b.address]) as nginx:
            ... websocket sessions to nginx.url ...
            await a.kill()            # SIGKILL, or a.terminate(): SIGTERM, drains
            await a.restart()         # the same port again; returns once /readyz says ready

A replica is `python -m loadtests.fake_server` (INSTANT FAKE MODELS, named as such: FakeAsr,
FakeLlm, FakeTts) on a free loopback port: the real gateway, its real SIGTERM drain
(GracefulServer), no model work. nginx is the Debian binary (scripts/system-deps.sh) started
in the foreground with every path (pid, logs, temp files) in `workdir`; `render_nginx_conf`
swaps in the replicas' addresses and the listen port and changes nothing else in the file.

Every wait is bounded; leaving a context stops its process (SIGTERM, then SIGKILL after a
timeout) and waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
NGINX_CONF: Final = REPO_ROOT / "deploy" / "nginx" / "voxgate.conf"
REPLICAS_BEGIN: Final = "# BEGIN replicas"
REPLICAS_END: Final = "# END replicas"
_STOP_TIMEOUT_S: Final = 15.0  # SIGTERM -> exit; the fake replicas' grace is shorter (below)
_POLL_S: Final = 0.05


class BalancerError(Exception):
    """A replica or nginx would not start (its log is in the message), or the config has
    changed shape so that it cannot be rendered."""


def nginx_binary() -> str | None:
    """The nginx executable (Debian's /usr/sbin is not on every PATH), or None."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def render_nginx_conf(text: str, replicas: Sequence[str], listen: str) -> str:
    """deploy/nginx/voxgate.conf with its upstream's `server` lines (between the BEGIN/END
    replicas markers) replaced by one per address in `replicas`, each keeping the parameters
    of the file's first line (max_fails=..., fail_timeout=...), and its one active `listen`
    directive's address replaced by `listen` (e.g. "127.0.0.1:8080")."""
    if not replicas:
        raise BalancerError("no replicas to render")
    block = re.search(
        rf"^([ \t]*){re.escape(REPLICAS_BEGIN)}\n(.*?)^[ \t]*{re.escape(REPLICAS_END)}$", text, re.M | re.S
    )
    if block is None:
        raise BalancerError(f"{NGINX_CONF.name}: no '{REPLICAS_BEGIN}' ... '{REPLICAS_END}' block")
    indent, body = block.group(1), block.group(2)
    first = re.search(r"^\s*server\s+\S+((?:\s+[a-z_]+=\S+?)*)\s*;", body, re.M)
    if first is None:
        raise BalancerError(f"{NGINX_CONF.name}: no server line between the replica markers")
    lines = "".join(f"{indent}server {address}{first.group(1)};\n" for address in replicas)
    text = text[: block.start(2)] + lines + text[block.end(2) :]
    rendered, count = re.subn(
        r"^([ \t]*listen[ \t]+)[^;\s]+([^;]*;)", rf"\g<1>{listen}\g<2>", text, flags=re.M
    )
    if count != 1:
        raise BalancerError(f"{NGINX_CONF.name}: expected one active listen directive, found {count}")
    return rendered


def log_path(workdir: Path, name: str) -> Path:
    """workdir/name, the directory created."""
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir / name


def main_conf(workdir: Path, include: Path) -> str:
    """A whole nginx.conf around the http-context file `include`, everything in `workdir`
    (what the official image's /etc/nginx/nginx.conf does with conf.d/*.conf)."""
    temp = {name: workdir / f"{name}_temp" for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(parents=True, exist_ok=True)
    return "\n".join(
        [
            "worker_processes 1;",
            f"pid {workdir / 'nginx.pid'};",
            f"error_log {workdir / 'error.log'} info;",
            "events { worker_connections 1024; }",
            "http {",
            f"    access_log {workdir / 'access.log'};",
            *(f"    {name}_temp_path {path};" for name, path in temp.items()),
            f"    include {include};",
            "}",
            "",
        ]
    )


def write_nginx_conf(workdir: Path, replicas: Sequence[str], listen: str) -> Path:
    """Render deploy/nginx/voxgate.conf into `workdir` with a main config around it; the
    main config's path."""
    workdir.mkdir(parents=True, exist_ok=True)
    site = workdir / "voxgate.conf"
    site.write_text(render_nginx_conf(NGINX_CONF.read_text(), replicas, listen))
    main = workdir / "nginx.conf"
    main.write_text(main_conf(workdir, site))
    return main


async def _stop(process: asyncio.subprocess.Process, sig: signal.Signals, timeout_s: float) -> int:
    """Send `sig` (if it still runs) and wait for the exit, SIGKILL after `timeout_s`."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
    try:
        return await asyncio.wait_for(process.wait(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        return await asyncio.wait_for(process.wait(), 5)


async def wait_ready(
    url: str, alive: asyncio.subprocess.Process, timeout_s: float, path: str = "/readyz"
) -> None:
    """Poll `url + path` until HTTP 200; BalancerError if `alive` exits or time runs out."""
    loop = asyncio.get_running_loop()
    deadline_s = loop.time() + timeout_s
    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as http:
        while loop.time() < deadline_s:
            if alive.returncode is not None:
                raise BalancerError(f"exited with {alive.returncode} while starting")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(url + path)).status_code == 200:
                    return
            await asyncio.sleep(_POLL_S)
    raise BalancerError(f"{url}{path} not ready within {timeout_s:g} s")


@dataclass(slots=True)
class Replica:
    """One fake-model server process; `restart()` starts a new one on the same port."""

    name: str
    port: int
    log_path: Path
    grace_s: float
    vad: str
    reply: str | None
    process: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    async def start(self, timeout_s: float = 60.0) -> None:
        """Start it and return once /readyz answers 200."""
        reply = [] if self.reply is None else ["--reply", self.reply]
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "loadtests.fake_server",
                "--port",
                str(self.port),
                "--vad",
                self.vad,
                "--shutdown-grace-s",
                str(self.grace_s),
                *reply,
                cwd=REPO_ROOT,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        try:
            await wait_ready(self.url, self.process, timeout_s)
        except BalancerError as exc:
            await self.stop()
            raise BalancerError(f"replica {self.name}: {exc}\n{self.log_path.read_text()[-3000:]}") from exc

    async def kill(self) -> int:
        """SIGKILL: the process ends at once, its connections with it; the exit status."""
        assert self.process is not None, "not started"
        return await _stop(self.process, signal.SIGKILL, 5)

    async def terminate(self, timeout_s: float = _STOP_TIMEOUT_S) -> int:
        """SIGTERM: it drains (server/http/shutdown.py) and exits; the exit status."""
        assert self.process is not None, "not started"
        return await _stop(self.process, signal.SIGTERM, timeout_s)

    async def restart(self, timeout_s: float = 60.0) -> None:
        """SIGTERM (drain), then a new process on the same port, ready."""
        await self.terminate()
        await self.start(timeout_s)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            await _stop(self.process, signal.SIGTERM, _STOP_TIMEOUT_S)


@contextlib.asynccontextmanager
async def fake_replica(
    workdir: Path, name: str, grace_s: float = 10.0, vad: str = "energy", reply: str | None = None
) -> AsyncIterator[Replica]:
    """A started fake-model replica on a free port (log: workdir/replica-NAME.log); stopped
    (SIGTERM, bounded) when the block ends. `vad` as `loadtests.fake_server --vad`: the fake
    energy classifier by default (no Silero worker process to start)."""
    replica = Replica(name, free_port(), log_path(workdir, f"replica-{name}.log"), grace_s, vad, reply)
    try:
        await replica.start()
        yield replica
    finally:
        await replica.stop()


@dataclass(frozen=True, slots=True)
class Nginx:
    url: str  # http://127.0.0.1:PORT
    process: asyncio.subprocess.Process
    conf_path: Path
    error_log: Path


async def check_nginx_conf(main_conf_path: Path) -> str:
    """`nginx -t` on a rendered config; its output. BalancerError if it fails."""
    binary = nginx_binary()
    if binary is None:
        raise BalancerError("nginx is not installed (scripts/system-deps.sh installs nginx-light)")
    check = await asyncio.create_subprocess_exec(
        binary,
        "-t",
        "-p",
        str(main_conf_path.parent),
        "-c",
        str(main_conf_path),
        "-e",
        str(main_conf_path.parent / "error.log"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(check.communicate(), 30)
    text = output.decode(errors="replace")
    if check.returncode != 0:
        raise BalancerError(f"nginx -t failed:\n{text}")
    return text


@contextlib.asynccontextmanager
async def nginx_balancer(
    workdir: Path, replicas: Sequence[str], timeout_s: float = 15.0
) -> AsyncIterator[Nginx]:
    """nginx in the foreground with deploy/nginx/voxgate.conf rendered for `replicas`
    ("host:port") on a free loopback port; yields once it answers. Stopped (SIGQUIT: graceful,
    then SIGKILL) when the block ends."""
    binary = nginx_binary()
    if binary is None:
        raise BalancerError("nginx is not installed (scripts/system-deps.sh installs nginx-light)")
    port = free_port()
    conf = write_nginx_conf(workdir, replicas, f"127.0.0.1:{port}")
    await check_nginx_conf(conf)
    with (workdir / "nginx.out").open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            binary,
            "-p",
            str(workdir),
            "-c",
            str(conf),
            "-e",
            str(workdir / "error.log"),
            "-g",
            "daemon off;",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            await wait_ready(url, process, timeout_s, path="/nginx-health")
        except BalancerError as exc:
            raise BalancerError(f"nginx: {exc}\n{(workdir / 'error.log').read_text()[-3000:]}") from exc
        yield Nginx(url, process, conf, workdir / "error.log")
    finally:
        # SIGQUIT: graceful (waits for open connections); the sessions are closed by then
        await _stop(process, signal.SIGQUIT, 10)
