"""How soon a caller hears a session's greeting, against a running server.

    VOXGATE_GREETING="Thank you for calling. How can I help you today?" make run   # elsewhere
    python -m loadtests.measure_greeting --url ws://127.0.0.1:8000 --sessions 6

Opens `--sessions` sessions one after another on /v1/realtime, says nothing, and times, from
`session.created`: the greeting's first `response.output_audio.delta` and its `response.done`
(the audio is paced in real time, so the latter is about the greeting's length). Prints each
session and the medians; exits 2 when the server sent no greeting (none configured).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import websockets


class NoGreeting(Exception):
    """The session's first response never came: the server has no greeting configured."""


@dataclass(frozen=True, slots=True)
class Greeted:
    first_audio_ms: float  # session.created -> the greeting's first audio delta
    done_ms: float  # session.created -> its response.done
    transcript: str


async def greeted(url: str, headers: dict[str, str], wait_s: float) -> Greeted:
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        created_s: float | None = None
        first_s: float | None = None
        try:
            async with asyncio.timeout(wait_s):
                while True:
                    event = json.loads(await ws.recv())
                    now_s = time.perf_counter()
                    if event["type"] == "session.created":
                        created_s = now_s
                    elif event["type"] == "response.output_audio.delta" and first_s is None:
                        first_s = now_s
                    elif event["type"] == "response.done" and created_s is not None and first_s is not None:
                        content = event["response"]["output"][0]["content"][0]
                        return Greeted(
                            (first_s - created_s) * 1000,
                            (now_s - created_s) * 1000,
                            content.get("transcript", ""),
                        )
        except TimeoutError:
            raise NoGreeting(f"no greeting within {wait_s:g} s of connecting") from None


async def measure(url: str, sessions: int, headers: dict[str, str], wait_s: float) -> list[Greeted]:
    return [await greeted(url, headers, wait_s) for _ in range(sessions)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.measure_greeting", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--url", default="ws://127.0.0.1:8000", help="the server (default %(default)s)")
    parser.add_argument(
        "--sessions", type=int, default=6, help="sessions, one after another (default %(default)s)"
    )
    parser.add_argument("--api-key", default=None, help="a key of VOXGATE_API_KEYS, if the server has some")
    parser.add_argument(
        "--wait-s", type=float, default=30.0, help="how long a greeting may take (default %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.sessions < 1:
        parser.error("--sessions must be at least 1")
    headers = {} if args.api_key is None else {"Authorization": f"Bearer {args.api_key}"}
    url = args.url.rstrip("/") + "/v1/realtime"
    try:
        rows = asyncio.run(measure(url, args.sessions, headers, args.wait_s))
    except NoGreeting as exc:
        print(f"{exc}: is VOXGATE_GREETING set on the server?", file=sys.stderr)
        return 2
    for row in rows:
        print(f"first audio {row.first_audio_ms:7.1f} ms   done {row.done_ms:7.1f} ms   {row.transcript!r}")
    first = statistics.median(r.first_audio_ms for r in rows)
    done = statistics.median(r.done_ms for r in rows)
    print(f"median of {len(rows)}: first audio {first:.1f} ms, done {done:.1f} ms after session.created")
    return 0


if __name__ == "__main__":
    sys.exit(main())
