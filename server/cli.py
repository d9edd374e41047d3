"""`voxgate serve [--host H] [--port P]`; `voxgate loadtest ...` (see loadtests/loadtest.py)."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn
from pydantic import ValidationError
from pydantic_settings import SettingsError

from server.app import create_app
from server.errors import BackendUnavailable
from server.settings import Settings


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["loadtest"]:  # the load test parses its own arguments
        from loadtests.loadtest import main as loadtest

        return loadtest(argv[1:], prog="voxgate loadtest")
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
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    from server.app import build_catalog, load_vad, preload

    try:
        catalog = build_catalog(settings)
        preload(settings, catalog)
        vad = load_vad(settings)
    except BackendUnavailable as exc:
        print(f"voxgate: cannot start: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings, vad=vad, catalog=catalog)
    print(
        f"Voxgate listening on http://{settings.host}:{settings.port}/  "
        f"(websocket ws://{settings.host}:{settings.port}/v1/realtime)",
        flush=True,
    )
    try:
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            ws_max_size=settings.max_message_bytes,
        )
    finally:
        catalog.close()
    return 0
