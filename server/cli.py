"""`voxgate serve [--host H] [--port P]`; `voxgate loadtest ...` (see loadtests/loadtest.py)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import uvicorn
from pydantic import ValidationError
from pydantic_settings import SettingsError

from server.errors import BackendUnavailable
from server.http.access import AccessConfigError, bind_refusal
from server.http.app import build_access, build_catalog, create_app, load_vad, preload
from server.http.knowledge_service import KnowledgeService
from server.http.listener import listening_socket
from server.http.shutdown import SHUTDOWN_LEFTOVER_S, GracefulServer, app_sessions
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
    sub.add_parser("loadtest", help="load-test a realtime server (voxgate loadtest --help)", add_help=False)
    args = parser.parse_args(argv)

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
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
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            log_config=None,  # uvicorn's records go through our handler (JSON lines by default)
            ws_max_size=settings.max_message_bytes,
            # after our drain (GracefulServer): a bound on what is left (HTTP requests)
            timeout_graceful_shutdown=SHUTDOWN_LEFTOVER_S,
        )
        # SIGTERM: refuse new sessions, let replies finish for up to shutdown_grace_s, close 1001
        # each connection's kernel send buffer is bounded (server/http/listener.py)
        sock = listening_socket(config, settings.max_outbound_buffer_ms)
        GracefulServer(config, app_sessions(app), settings.shutdown_grace_s).run(sockets=[sock])
    finally:
        catalog.close()
    return 0


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
