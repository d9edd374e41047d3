"""A real redis-server (Debian's package) on a free loopback port, for the shared-state tests.

`redis_server()` starts one with no persistence, waits until it answers PING and stops it at
the end; `RedisProcess.pause()` / `resume()` (SIGSTOP / SIGCONT) make it hang like an
overloaded or partitioned Redis, `stop()` makes it refuse connections. Tests that need it skip
with a reason where the package is not installed (scripts/system-deps.sh installs it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
)
_START_TIMEOUT_S = 10.0


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
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (Debian package redis-server; scripts/system-deps.sh)")
    port = free_port()
    command = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    command += ["--dir", str(workdir), "--loglevel", "warning"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    redis = RedisProcess(process, port)
    try:
        deadline_s = time.monotonic() + _START_TIMEOUT_S
        while not _answers_ping(port):
            assert process.poll() is None, f"redis-server exited with {process.returncode}"
            assert time.monotonic() < deadline_s, "redis-server did not answer PING"
            time.sleep(0.02)
        yield redis
    finally:
        redis.stop()
