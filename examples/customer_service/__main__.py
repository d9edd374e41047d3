"""`python -m examples.customer_service [--db PATH] [--host H] [--port P]` (or `make example`)."""

from __future__ import annotations

import argparse
import logging
import sqlite3
import sys
from pathlib import Path

import uvicorn
from pydantic import ValidationError
from pydantic_settings import SettingsError

from examples.customer_service.app import DeskSettings, create_desk_app
from examples.customer_service.desk import utc_now
from examples.customer_service.store import SupportStore
from server import Settings
from server.errors import BackendUnavailable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.customer_service",
        description="A phone support desk (order status, refunds, transfer to a person) on Voxgate",
    )
    parser.add_argument(
        "--db", type=Path, default=None, help="SQLite file (default: DESK_DB or a per-user file)"
    )
    parser.add_argument("--host", default=None, help="bind address (default VOXGATE_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default VOXGATE_PORT or 8000)")
    args = parser.parse_args(argv)
    try:
        desk = DeskSettings(**({"db": args.db} if args.db is not None else {}))
        overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        voice = Settings(**overrides)
    except (ValidationError, SettingsError) as exc:
        print(f"support desk: invalid settings: {exc}", file=sys.stderr)
        return 2
    try:  # created (and seeded) here too, so a bad path fails with a message, not a traceback
        store = SupportStore(desk.db)
        store.create(utc_now().date())
        store.close()
    except (OSError, sqlite3.Error) as exc:
        print(f"support desk: cannot open the database {desk.db}: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=voice.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    app = create_desk_app(desk, voice)
    base = f"http://{voice.host}:{voice.port}"
    mode = (
        "the remote language model calls the tools" if voice.llm == "openai" else "offline dialogue manager"
    )
    print(
        f"Support desk ({mode}); database {desk.db}\n"
        f"  voice page: {base}{desk.voice_path}/\n"
        f"  websocket:  ws://{voice.host}:{voice.port}{desk.voice_path}/v1/realtime?caller=%2B15550100001\n"
        f"  backend:    {base}/orders/1234  {base}/calls  {base}/refunds  {base}/handoffs",
        flush=True,
    )
    try:
        uvicorn.run(
            app,
            host=voice.host,
            port=voice.port,
            log_level=voice.log_level,
            ws_max_size=voice.max_message_bytes,
        )
    except BackendUnavailable as exc:
        print(f"support desk: cannot start: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
