"""Model work in a child process over a socket pair: starting one, and reading from the socket.

The PocketSphinx decoders and the Silero VAD worker run as `python -m <module> FD ARGS...`,
where FD is the child's end of a socket pair: a process of their own keeps their inference
off the server's event loop and out of its GIL.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Final

from server.errors import BackendUnavailable

_PACKAGE_ROOT: Final = str(Path(__file__).resolve().parents[2])  # the folder holding `server`


def launch(module: str, *args: str, what: str) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Start `python -m module FD *args` with the child's end of a new socket pair as FD;
    returns the process and the parent's end. `what` names it in the BackendUnavailable
    raised if it cannot start."""
    parent_sock, child_sock = socket.socketpair()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(path for path in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if path)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", module, str(child_sock.fileno()), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            pass_fds=(child_sock.fileno(),),
            env=env,
        )
    except OSError as exc:
        parent_sock.close()
        raise BackendUnavailable(f"cannot start {what}: {exc}") from exc
    finally:
        child_sock.close()
    return process, parent_sock


def read_exactly(sock: socket.socket, size: int) -> bytes:
    """`size` bytes from a blocking socket; EOFError if it closes first."""
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("socket closed")
        data += chunk
    return bytes(data)
