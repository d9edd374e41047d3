"""A real redis-server (Debian's package) on a free loopback port, for benchmarks and tests.

`redis_server(workdir)` starts one with no persistence, waits until it answers PING and stops
it at the end. `RedisProcess.pause()` / `resume()` (SIGSTOP / SIGCONT) make it hang like an
overloaded or partitioned Redis; `stop()` makes it refuse connections.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_START_TIMEOUT_S = 10.0


class RedisUnavailable(RuntimeError):
    """redis-server is not installed (Debian package redis-server; scripts/system-deps.sh)."""


def redis_server_path() -> str | None:
    found = shutil.which("redis-server")
    if found is None and Path("/usr/bin/redis-server").exists():
        found = "/usr/bin/redis-server"
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers_ping(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")
    return False


@dataclass
class RedisProcess:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def pause(self) -> None:
        """Stop answering without closing connections: commands time out."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Gone: connections are refused."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            self.process.wait(10)


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[RedisProcess]:
    """A fresh redis-server, stopped on exit. Raises RedisUnavailable when not installed."""
    binary = redis_server_path()
    if binary is None:
        raise RedisUnavailable(
            "redis-server is not installed (Debian package redis-server; scripts/system-deps.sh)"
        )
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    command += ["--dir", str(workdir), "--loglevel", "warning"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    redis = RedisProcess(process, port)
    try:
        deadline_s = time.monotonic() + _START_TIMEOUT_S
        while not _answers_ping(port):
            if process.poll() is not None:
                raise RedisUnavailable(f"redis-server exited with {process.returncode}")
            if time.monotonic() > deadline_s:
                raise RedisUnavailable("redis-server did not answer PING")
            time.sleep(0.02)
        yield redis
    finally:
        redis.stop()
