"""A batching VAD backend (Silero) in a process of its own: frames in, probabilities out.

The server's event loop runs every session; an ONNX inference on it, even batched, took a
quarter of its time at 50 sessions, and a worker thread in the server's process fights the
loop for the GIL (server/vad/batch.py). Here the inference runs in another process,
on another core, and the loop only packs and unpacks bytes.

    python -m server.vad.worker FD BACKEND      # FD: one end of a socket pair

Messages on the socket, little-endian; each starts with a kind byte and a u32:
    parent -> worker   b"O" id, f32 threshold          open a classifier (before its frames)
                       b"B" n, then n x (u32 id, frame_samples x i16)
                                                       the next frame of n different classifiers
                       b"F" id                         forget a classifier (its session ended)
    worker -> parent   b"R" frame_samples              ready (once, after the model loaded)
                       b"P" n, then n x f32            the probabilities of one B, in order
                       b"X" length, then UTF-8 text    a failure; the worker then exits
The parent sends B messages without waiting for the answers; the worker answers them in order.
"""

from __future__ import annotations

import signal
import socket
import struct
import sys
from typing import Final

import numpy as np

from server.audio import PcmFrame
from server.model.registry import VAD_BACKENDS, resolve
from server.model.worker_process import read_exactly
from server.vad.detector import BatchableVad, FrameClassifier

HEADER: Final = struct.Struct("<cI")
OPEN: Final = struct.Struct("<cIf")
OPEN_KIND, BATCH, FORGET = b"O", b"B", b"F"
READY, PROBABILITIES, FAILED = b"R", b"P", b"X"


def serve(sock: socket.socket, backend: str) -> None:
    """Load `backend` (a VAD registry name whose backend batches), then answer until the
    parent closes its end."""

    def fail(text: str) -> None:
        payload = text.encode("utf-8", "replace")
        sock.sendall(HEADER.pack(FAILED, len(payload)) + payload)

    try:
        factory = resolve(VAD_BACKENDS, backend, "voice activity")(None)
    except Exception as exc:
        fail(f"{type(exc).__name__}: {exc}")
        return
    if not isinstance(factory, BatchableVad):
        fail(f"the {backend!r} VAD backend cannot classify batches")
        return
    probe = factory.open(0.5)
    rate_hz = probe.sample_rate_hz
    frame_samples = rate_hz * probe.frame_ms // 1000
    row = np.dtype([("id", "<u4"), ("pcm", "<i2", (frame_samples,))])
    classifiers: dict[int, FrameClassifier] = {}
    sock.sendall(HEADER.pack(READY, frame_samples))
    while True:
        try:
            kind, value = HEADER.unpack(read_exactly(sock, HEADER.size))
            if kind == OPEN_KIND:
                (threshold,) = struct.unpack("<f", read_exactly(sock, 4))
                classifiers[value] = factory.open(threshold)
            elif kind == FORGET:
                classifiers.pop(value, None)
            elif kind == BATCH:
                rows = np.frombuffer(read_exactly(sock, value * row.itemsize), dtype=row)
                batch = [(classifiers[int(r["id"])], PcmFrame(r["pcm"].copy(), rate_hz)) for r in rows]
                probabilities = np.asarray(factory.speech_probabilities(batch), dtype="<f4")
                sock.sendall(HEADER.pack(PROBABILITIES, len(batch)) + probabilities.tobytes())
            else:
                fail(f"unknown message kind {kind!r}")
                return
        except (EOFError, OSError):
            return  # the parent went away
        except Exception as exc:  # a bad frame, an unknown id, the model failing: say so, stop
            fail(f"{type(exc).__name__}: {exc}")
            return


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when its workers stop
    serve(socket.socket(fileno=int(sys.argv[1])), sys.argv[2])
