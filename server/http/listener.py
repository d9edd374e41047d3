"""The listening socket, with a small kernel send buffer for every connection it accepts.

A client that stops reading stops taking TCP data; until the server's buffers are full its
websocket sends still complete, so the stall cannot be seen (server/streaming/guard.py bounds
how long a blocked send may wait). Linux autotunes a socket's send buffer up to
`net.ipv4.tcp_wmem` (about 4 MB by default): some 45 s of 24 kHz audio held for a client that
is not listening. Setting SO_SNDBUF on the listening socket fixes the size (accepted sockets
inherit it and autotuning stops) at about half of `max_outbound_buffer_ms` worth of the
largest audio we send; uvicorn's transport holds up to 64 KiB more before a send waits.
A buffer of this size still carries real-time audio over a long path: 64 KB per 200 ms round
trip is 320 KB/s, five times the 64 KB/s of 24 kHz PCM16 as base64.
"""

from __future__ import annotations

import socket

import uvicorn

# 24 kHz PCM16 as base64 in a JSON event: 48 bytes per ms of audio, times 4/3
AUDIO_EVENT_BYTES_PER_MS = 64
MIN_SEND_BUFFER_BYTES = 16 * 1024


def send_buffer_bytes(max_outbound_buffer_ms: int) -> int:
    """What the kernel may hold for one connection: half the outbound bound's audio."""
    return max(MIN_SEND_BUFFER_BYTES, max_outbound_buffer_ms * AUDIO_EVENT_BYTES_PER_MS // 2)


def listening_socket(config: uvicorn.Config, max_outbound_buffer_ms: int) -> socket.socket:
    """uvicorn's socket for `config` (host, port), its send buffer sized as above. Pass it to
    `uvicorn.Server(config).run(sockets=[...])`."""
    sock = config.bind_socket()
    # Linux doubles the value asked for (the rest is its bookkeeping)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_bytes(max_outbound_buffer_ms) // 2)
    return sock


def bound_listening_socket(host: str, port: int, max_outbound_buffer_ms: int) -> socket.socket:
    """The same socket bound before any app exists: a supervisor binds it once for its worker
    processes (server/http/workers.py), which serve it with their own `uvicorn.Config`."""
    unloaded = "server.http.listener:no_app"  # a Config needs an app; binding never loads it
    config = uvicorn.Config(unloaded, host=host, port=port, log_config=None)
    return listening_socket(config, max_outbound_buffer_ms)
