"""`voxgate serve [--host H] [--port P] [--workers N]`; `voxgate loadtest ...` (see
loadtests/loadtest.py)."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError
from pydantic_settings import SettingsError

from server.errors import BackendUnavailable
from server.http.access import AccessConfigError, bind_refusal
from server.http.app import build_access, build_catalog, create_app, load_vad, preload
from server.http.knowledge_service import KnowledgeService
from server.http.listener import bound_listening_socket, listening_socket
from server.http.shutdown import SHUTDOWN_LEFTOVER_S, GracefulServer, app_sessions, shutdown_bound_s
from server.http.workers import WorkerPlan, check_in_fresh_process, serve_with_workers
from server.knowledge.knowledge import KnowledgeFileError
from server.logs import configure_logging, resolve_log_format
from server.settings import Settings


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["loadtest"]:  # the load test parses its own arguments
        return run_loadtest(argv[1:])
    parser = argparse.ArgumentParser(prog="voxgate", description="Voxgate voice server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8000)")
    serve.add_argument(
        "--workers", type=int, default=None, help="processes sharing the port (default 1; VOXGATE_WORKERS)"
    )
    sub.add_parser("loadtest", help="load-test a realtime server (voxgate loadtest --help)", add_help=False)
    args = parser.parse_args(argv)

    given = (("host", args.host), ("port", args.port), ("workers", args.workers))
    overrides: dict[str, Any] = {k: v for k, v in given if v is not None}
    try:
        settings = Settings(**overrides)
    except (ValidationError, SettingsError) as exc:
        print(f"voxgate: invalid settings (VOXGATE_* environment variables): {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, resolve_log_format(settings.log_format, sys.stderr.isatty()))
    try:
        access = build_access(settings)
    except AccessConfigError as exc:
        print(f"voxgate: cannot start: {exc}", file=sys.stderr)
        return 2
    refusal = bind_refusal(settings.host, access.requires_key, settings.allow_unauthenticated)
    if refusal is not None:
        print(f"voxgate: {refusal}", file=sys.stderr)
        return 2
    if settings.workers > 1:
        # the models are loaded once in a process of their own, so that a missing one stops
        # the server here while the supervisor holds none (closing a catalog does not give
        # the memory back: ~300 MB with the quality profile, BENCHMARKS.md "Workers")
        problem = check_in_fresh_process(check_models, overrides)
        if problem is not None:
            print(f"voxgate: cannot start: {problem}", file=sys.stderr)
            return 2
        print(
            f"Voxgate listening on http://{settings.host}:{settings.port}/  "
            f"(websocket ws://{settings.host}:{settings.port}/v1/realtime), {settings.workers} workers",
            flush=True,
        )
        sock = bound_listening_socket(settings.host, settings.port, settings.max_outbound_buffer_ms)
        plan = WorkerPlan(serve_worker, (overrides,))
        return serve_with_workers(plan, sock, settings.workers, shutdown_bound_s(settings.shutdown_grace_s))
    try:
        knowledge = KnowledgeService.from_settings(settings, checks_replies=True)  # a bad file: its line
        catalog = build_catalog(settings)
        preload(settings, catalog)
        load_vad(settings)  # a missing VAD fails here; the app loads it again (in a worker process)
    except (BackendUnavailable, KnowledgeFileError) as exc:
        print(f"voxgate: cannot start: {exc}", file=sys.stderr)
        return 2
    # its own access control: with Redis, secrets are shared
    app = create_app(settings, catalog=catalog, knowledge=knowledge)
    print(
        f"Voxgate listening on http://{settings.host}:{settings.port}/  "
        f"(websocket ws://{settings.host}:{settings.port}/v1/realtime)",
        flush=True,
    )
    try:
        # each connection's kernel send buffer is bounded (server/http/listener.py)
        config = uvicorn_config(app, settings)
        serve_drained(app, settings, listening_socket(config, settings.max_outbound_buffer_ms), config)
    finally:
        catalog.close()
    return 0


def uvicorn_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # uvicorn's records go through our handler (JSON lines by default)
        ws_max_size=settings.max_message_bytes,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,  # None: uvicorn's FORWARDED_ALLOW_IPS
        # after our drain (GracefulServer): a bound on what is left (HTTP requests)
        timeout_graceful_shutdown=SHUTDOWN_LEFTOVER_S,
    )


def serve_drained(app: FastAPI, settings: Settings, sock: socket.socket, config: uvicorn.Config) -> None:
    """Serve `app` on `sock` until SIGTERM: refuse new sessions, let replies finish for up to
    shutdown_grace_s, close 1001 (server/http/shutdown.py)."""
    GracefulServer(config, app_sessions(app), settings.shutdown_grace_s).run(sockets=[sock])


def check_models(overrides: dict[str, Any]) -> str | None:
    """Load the default profile's models (and any preloaded) and the VAD, as every worker
    will, then unload them: why they cannot be loaded, or None."""
    settings = Settings(**overrides)
    catalog = build_catalog(settings)
    try:
        KnowledgeService.from_settings(settings, checks_replies=True)  # a bad file: its line
        preload(settings, catalog)
        load_vad(settings)
    except (BackendUnavailable, KnowledgeFileError) as exc:
        return str(exc)
    finally:
        catalog.close()
    return None


def serve_worker(sock: socket.socket, overrides: dict[str, Any]) -> None:
    """One worker process of `voxgate serve --workers N` (server/http/workers.py): the app
    built from the same settings as the supervisor's (which checked them), its own models
    loaded, serving the shared socket until SIGTERM, drained like a single process."""
    settings = Settings(**overrides)
    configure_logging(settings.log_level, resolve_log_format(settings.log_format, sys.stderr.isatty()))
    catalog = build_catalog(settings)
    try:
        app = create_app(settings, catalog=catalog)
        serve_drained(app, settings, sock, uvicorn_config(app, settings))
    finally:
        catalog.close()


# loadtests/loadtest.py reads its program name for its usage text from here
LOADTEST_PROG_ENV = "VOXGATE_LOADTEST_PROG"


def run_loadtest(args: list[str]) -> int:
    """`voxgate loadtest ARGS`: the load test runs as a program of its own
    (`python -m loadtests.loadtest`, also the `voxgate-loadtest` script), so the server never
    imports the load-test client. Its exit status is returned. Its stderr (progress lines,
    errors) is passed on line by line through this process's sys.stderr; stdout is shared."""
    command = [sys.executable, "-m", "loadtests.loadtest", *args]
    env = {**os.environ, LOADTEST_PROG_ENV: "voxgate loadtest"}
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) as child:
        assert child.stderr is not None
        while True:
            try:
                for line in child.stderr:
                    sys.stderr.write(line)
                    sys.stderr.flush()
                break
            except KeyboardInterrupt:  # the child got the same Ctrl-C: let it end and report
                continue
    return child.returncode
