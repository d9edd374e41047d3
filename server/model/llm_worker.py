"""The embedded language model in a process of its own: turns in, text pieces out.

    python -m server.model.llm_worker FD ENGINE OPTIONS_JSON   # FD: one end of a socket pair

Why a process: a native crash in llama.cpp (a segfault on a CPU code path it gets wrong)
would otherwise end every session of the server at once; here it ends one reply, and the
parent (server/model/llm_process.py) starts a new worker. And generation runs on this
process's main thread, where llama.cpp's OpenMP team decodes faster than from a worker
thread (BENCHMARKS.md, `loadtests/measure_llm.py --where`).

Messages on the socket: a little-endian u32 length, then that many bytes of UTF-8 JSON.
    parent -> worker  {"op": "turn", "id", "history": [{"role", "text", "interrupted"}],
                       "instructions", "temperature", "max_output_tokens", "queued_at"}
                      {"op": "stop", "id"}              end that turn (or drop it unstarted)
                      {"op": "eot", "id", "history", "words", "instructions"}
                                                        P(the caller's line ends after `words`)
    worker -> parent  {"op": "ready", "cpu_variant"}    once, after the model loaded
                      {"op": "started", "id"}           the turn's generation began
                      {"op": "piece", "id", "text"}     reply text, in order
                      {"op": "done", "id", "stats"}     the turn ended (stats: TurnStats)
                      {"op": "eot", "id", "probability"} the answer to an eot request
                      {"op": "error", "id", "error"}    the turn failed; the worker goes on
                      {"op": "failed", "error"}         the model could not load; it exits
Turns and eot requests are served one at a time, in the order they arrive; a stop is read
between tokens.
`queued_at` is `time.monotonic()` in the parent (one clock for every process on the host).
"""

from __future__ import annotations

import faulthandler
import json
import select
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Final, Protocol

from server.model.worker_process import read_exactly

LENGTH: Final = struct.Struct("<I")
MAX_MESSAGE_BYTES: Final = 16 << 20
# engine name -> "module:loader"; a "module:loader" given as the name is used as it is (tests
# load a fake engine so)
ENGINES: Final = {"gemma": "server.model.backends.gemma_llm:load_engine"}


def send_message(sock: socket.socket, message: dict[str, Any]) -> None:
    payload = json.dumps(message, separators=(",", ":")).encode()
    sock.sendall(LENGTH.pack(len(payload)) + payload)


def read_message(sock: socket.socket) -> dict[str, Any]:
    """The next message from a blocking socket; EOFError if it closes first."""
    (size,) = LENGTH.unpack(read_exactly(sock, LENGTH.size))
    if size > MAX_MESSAGE_BYTES:
        raise ValueError(f"message of {size} bytes")
    message = json.loads(read_exactly(sock, size))
    if not isinstance(message, dict):
        raise ValueError("a message must be a JSON object")
    return message


class Engine(Protocol):
    """What the worker serves: the `GemmaEngine` shape. An optional `cpu_variant` attribute
    names the llama.cpp CPU code it runs (server/model/llama_runtime.py)."""

    def generate(
        self,
        history: Any,
        options: Any,
        emit: Callable[[str], None],
        should_stop: Callable[[], bool],
        wait_ms: float = 0.0,
    ) -> Any: ...

    def end_of_turn_probability(self, history: Any, words: str, options: Any) -> float: ...


class Inbox:
    """Messages from the parent: turns waiting their go, and the ids told to stop."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.turns: deque[dict[str, Any]] = deque()
        self.stopped: set[int] = set()

    def poll(self, *, block: bool) -> None:
        """Read what has arrived (waiting for one message if `block`); EOFError when the
        parent has gone."""
        while block or select.select([self._sock], [], [], 0)[0]:
            message = read_message(self._sock)
            block = False
            if message["op"] in ("turn", "eot"):
                self.turns.append(message)
            elif message["op"] == "stop":
                self.stopped.add(int(message["id"]))
            else:
                raise ValueError(f"unknown op {message['op']!r}")


def serve(sock: socket.socket, engine_name: str, options: dict[str, Any]) -> None:
    """Load the engine, then serve turns until the parent closes its end."""
    from importlib import import_module

    from server.model.base import Message, SessionOptions

    try:
        module_name, _, attr = ENGINES.get(engine_name, engine_name).partition(":")
        engine: Engine = getattr(import_module(module_name), attr)(options)
        variant = str(getattr(engine, "cpu_variant", "none"))
    except Exception as exc:
        send_message(sock, {"op": "failed", "error": f"{type(exc).__name__}: {exc}"})
        return
    send_message(sock, {"op": "ready", "cpu_variant": variant})
    inbox = Inbox(sock)
    while True:
        try:
            if not inbox.turns:
                inbox.poll(block=True)
                continue
            turn = inbox.turns.popleft()
            turn_id = int(turn["id"])
            if turn_id in inbox.stopped:
                inbox.stopped.discard(turn_id)
                send_message(sock, {"op": "done", "id": turn_id, "stats": None})
                continue
            history = [
                Message(m["role"], m["text"], interrupted=bool(m.get("interrupted"))) for m in turn["history"]
            ]
            session = SessionOptions(
                instructions=turn.get("instructions") or "",
                temperature=float(turn.get("temperature", 0.8)),
                max_output_tokens=turn.get("max_output_tokens"),
            )
            if turn["op"] == "eot":
                try:
                    probability = engine.end_of_turn_probability(history, str(turn["words"]), session)
                except (EOFError, OSError):
                    raise
                except Exception as exc:
                    send_message(
                        sock, {"op": "error", "id": turn_id, "error": f"{type(exc).__name__}: {exc}"}
                    )
                else:
                    send_message(sock, {"op": "eot", "id": turn_id, "probability": probability})
                continue
            send_message(sock, {"op": "started", "id": turn_id})

            def should_stop(turn_id: int = turn_id) -> bool:
                inbox.poll(block=False)
                return turn_id in inbox.stopped

            def emit(text: str, turn_id: int = turn_id) -> None:
                send_message(sock, {"op": "piece", "id": turn_id, "text": text})

            wait_ms = max(0.0, (time.monotonic() - float(turn.get("queued_at", time.monotonic()))) * 1000)
            try:
                stats = engine.generate(history, session, emit, should_stop, wait_ms)
            except (EOFError, OSError):
                raise
            except Exception as exc:  # this turn failed; the model and the worker are fine
                send_message(sock, {"op": "error", "id": turn_id, "error": f"{type(exc).__name__}: {exc}"})
            else:
                send_message(sock, {"op": "done", "id": turn_id, "stats": asdict(stats)})
            inbox.stopped.discard(turn_id)
        except (EOFError, OSError):
            return  # the parent went away


if __name__ == "__main__":
    faulthandler.enable()  # a native crash prints where it happened to the server's stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when its workers stop
    serve(socket.socket(fileno=int(sys.argv[1])), sys.argv[2], json.loads(sys.argv[3]))
