"""Worker targets for the supervisor's tests: module-level, so a spawned worker imports them."""

from __future__ import annotations

import socket
import sys


def exit_with(sock: socket.socket, status: int) -> None:
    """A worker that ends at once with `status` (3: uvicorn's startup failure)."""
    sock.close()
    sys.exit(status)
