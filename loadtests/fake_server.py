"""Voxgate serving INSTANT FAKE MODELS, to measure the gateway itself:
`python -m loadtests.fake_server --port 8765 [--vad webrtc|silero|energy] [--workers N]`.

The model is the real `CascadeModel` of the fakes in `server/model/fakes.py` with zero delays:
`FakeAsr` (transcribes nothing: every turn is "hello there"), `FakeLlm` (always answers
`REPLY`, word by word, at once) and `FakeTts` (a 220 Hz tone, 50 ms per character: 3.2 s,
long enough to be talked over). They do no work, so whatever latency and CPU a load test
measures against this server is the gateway's: websocket and JSON handling, resampling, voice
activity detection, turn-taking, pacing. The VAD is a real one, the server's default unless
`--vad webrtc|silero` (it runs on every frame in production); `--vad energy` swaps in the fake
energy classifier. `--workers N` (N > 1) serves the port from N worker processes, as
`voxgate serve --workers N` does (server/http/workers.py), each with its own fake models.

SIGTERM drains as `voxgate serve` does (server/http/shutdown.py): new sessions refused, replies
in progress finish for up to `--shutdown-grace-s`, then every session closes with 1001, so the
replicas behind a load balancer in tests/deploy/ behave as real ones on a rolling restart.

`--api-key KEY` makes it require that key (a gateway test's upstream that
refuses a bad one); `--events-log PATH` appends every event it publishes to embedding code
(server/events.py) to PATH as JSON lines, so a test can see what this server did (a
truncation a gateway asked for, say). `--upstream ws://HOST:PORT/v1/realtime` serves the
`realtime` profile instead of the fakes: a gateway relaying every session to that upstream
(server/model/backends/realtime_upstream.py), with the same VAD and settings, so the cost of
the hop can be measured against the upstream served directly (loadtests/upstream_hop.py).

Unlike the rest of `loadtests`, this module imports the server: it is the server side.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import uvicorn
from fastapi import FastAPI

from server.events import AgentEvent, EventHandler
from server.http.app import create_app, load_vad
from server.http.listener import bound_listening_socket
from server.http.shutdown import SHUTDOWN_LEFTOVER_S, GracefulServer, app_sessions, shutdown_bound_s
from server.http.workers import WorkerPlan, serve_with_workers
from server.model.cascade import CascadeModel
from server.model.fakes import FAKE_AUDIO_SETTINGS, EnergyClassifierFactory, FakeAsr, FakeLlm, FakeTts
from server.settings import Settings
from server.vad.detector import ClassifierFactory

REPLY: Final = "Sure, I can help with that. Let me look it up for you right now."  # 3.2 s of audio
VADS: Final = ("webrtc", "silero", "energy")
# no session limit, no connection-rate limits (docs/operations.md)
UNLIMITED: Final = {"max_sessions": 100_000, "ip_connections_per_minute": 0, "key_connections_per_minute": 0}
MODEL_DESCRIPTION: Final = "instant fake models (FakeAsr, FakeLlm, FakeTts; zero delays)"


def events_log(path: Path) -> EventHandler:
    """An event handler appending each event to `path`: {"event": class name, **fields}."""

    async def write(event: AgentEvent) -> None:
        fields = dataclasses.asdict(event)
        with path.open("a") as out:
            out.write(json.dumps({"event": type(event).__name__, **fields}, default=str) + "\n")

    return write


def fake_model_app(
    vad: str | None = None,
    reply: str = REPLY,
    vad_process: bool = True,
    api_keys: Sequence[str] = (),
    on_event: EventHandler | None = None,
) -> FastAPI:
    """The Voxgate app with the instant fake models, answering `reply` to every turn, and the
    named VAD: `webrtc`, `silero`, `energy` (the fake), or None for the server's default;
    `vad_process` False keeps Silero's batches on the event loop.
    Admission limits are off: the load generator opens many sessions from one address; echo
    cancellation is off (FAKE_AUDIO_SETTINGS: the fakes speak in tones)."""
    model = CascadeModel(FakeAsr(), FakeLlm([reply]), FakeTts())
    keys = {"api_keys": list(api_keys)} if api_keys else {}
    if vad == "energy":
        config = Settings.model_validate({**UNLIMITED, **FAKE_AUDIO_SETTINGS, **keys})
        classifier: ClassifierFactory = EnergyClassifierFactory()
        return create_app(config, model=model, vad=classifier, on_event=on_event)
    chosen = {} if vad is None else {"vad": vad}
    config = Settings.model_validate(
        {**UNLIMITED, **FAKE_AUDIO_SETTINGS, **chosen, **keys, "vad_process": vad_process}
    )
    load_vad(config)  # a missing backend fails here, before the server starts
    # the app loads the VAD by name, as `voxgate serve` does
    return create_app(config, model=model, on_event=on_event)


def gateway_app(upstream_url: str, vad: str | None = None, turn_detection: str = "gateway") -> FastAPI:
    """Voxgate serving the `realtime` profile from `upstream_url`, with the fake server's
    settings and VAD (`energy` or a named one); `turn_detection` "upstream": the upstream's
    VAD ends the turns instead."""
    chosen = {} if vad in (None, "energy") else {"vad": vad}
    config = Settings.model_validate(
        {
            **UNLIMITED,
            **FAKE_AUDIO_SETTINGS,
            **chosen,
            "profile": "realtime",
            "backend_options": {"realtime": {"url": upstream_url, "turn_detection": turn_detection}},
        }
    )
    classifier = EnergyClassifierFactory() if vad == "energy" else None
    return create_app(config, vad=classifier)


def fake_worker(sock: socket.socket, vad: str | None, reply: str, vad_process: bool, grace_s: float) -> None:
    """One worker process of `--workers N`: `fake_model_app(...)` built in the worker, served
    on the shared socket until SIGTERM (drained, as `voxgate serve` workers are)."""
    app = fake_model_app(vad, reply, vad_process=vad_process)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=SHUTDOWN_LEFTOVER_S)
    GracefulServer(config, app_sessions(app), grace_s).run(sockets=[sock])


def vad_name(vad: str | None) -> str:
    """The VAD that `fake_model_app(vad)` uses."""
    return vad if vad is not None else Settings().vad


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.fake_server", description=f"Voxgate with {MODEL_DESCRIPTION}."
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s)")
    parser.add_argument("--port", type=int, default=8765, help="port (default %(default)s)")
    parser.add_argument(
        "--vad", choices=VADS, default=None, help="voice activity detector (default: the server's)"
    )
    parser.add_argument(
        "--reply", default=REPLY, help="what the fake language model answers (50 ms of audio a character)"
    )
    parser.add_argument(
        "--vad-in-loop",
        action="store_true",
        help="classify Silero's batches on the event loop instead of in a worker process",
    )
    parser.add_argument(
        "--shutdown-grace-s",
        type=float,
        default=Settings.model_fields["shutdown_grace_s"].default,
        help="on SIGTERM, how long replies in progress may finish (default %(default)s)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes sharing the port (default %(default)s)"
    )
    parser.add_argument(
        "--upstream", help="relay sessions to this realtime URL instead (the realtime profile)"
    )
    parser.add_argument(
        "--upstream-turn-detection",
        choices=("gateway", "upstream"),
        default="gateway",
        help="with --upstream: whose VAD ends the turns (default %(default)s)",
    )
    parser.add_argument("--api-key", action="append", default=[], help="require this API key (repeatable)")
    parser.add_argument(
        "--events-log", type=Path, help="append the server's events to this file (JSON lines)"
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, not {args.workers}")
    if args.workers > 1 and (args.upstream or args.api_key or args.events_log):
        parser.error("--workers N serves the plain fake models: no --upstream, --api-key or --events-log")
    described = (
        f"Voxgate ({MODEL_DESCRIPTION}, {vad_name(args.vad)} VAD) on ws://{args.host}:{args.port}/v1/realtime"
    )
    if args.workers > 1:
        if args.vad != "energy":
            load_vad(Settings.model_validate({} if args.vad is None else {"vad": args.vad}))  # fails here
        print(f"{described}, {args.workers} workers", flush=True)
        sock = bound_listening_socket(args.host, args.port, Settings().max_outbound_buffer_ms)
        plan = WorkerPlan(fake_worker, (args.vad, args.reply, not args.vad_in_loop, args.shutdown_grace_s))
        return serve_with_workers(plan, sock, args.workers, shutdown_bound_s(args.shutdown_grace_s))
    if args.upstream:
        app = gateway_app(args.upstream, args.vad, args.upstream_turn_detection)
        described = f"Voxgate gateway to {args.upstream} on ws://{args.host}:{args.port}/v1/realtime"
    else:
        app = fake_model_app(
            args.vad,
            args.reply,
            vad_process=not args.vad_in_loop,
            api_keys=args.api_key,
            on_event=None if args.events_log is None else events_log(args.events_log),
        )
    print(described, flush=True)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=SHUTDOWN_LEFTOVER_S,
    )
    GracefulServer(config, app_sessions(app), args.shutdown_grace_s).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
