"""Voxgate serving INSTANT FAKE MODELS for a soak run: `python -m loadtests.soak_server --port 8765`.

The same server as `loadtests.fake_server --vad energy` (the real `CascadeModel` over FakeAsr,
FakeLlm and FakeTts with zero delays, the fake energy VAD), except that the fakes keep no record:
`FakeLlm.calls` (a copy of every history it was called with) and `FakeAsr.streams` (every
stream) are a test's record of what happened, and over a soak they would grow by themselves
(the history copies quadratically in a long session), hiding or faking a leak of the server.
With a one-entry script, what the fakes answer does not depend on those lists.

Connection-rate limits and the session limit come from the environment (`VOXGATE_*`), as for
`python -m server serve`. Unlike the rest of `loadtests`, this module imports the server.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TypeVar

import uvicorn
from fastapi import FastAPI

from server.http.app import create_app
from server.model.cascade import CascadeModel
from server.model.fakes import EnergyClassifierFactory, FakeAsr, FakeLlm, FakeTts
from server.settings import Settings

T = TypeVar("T")


class KeepsNothing(list[T]):
    """A list that drops whatever is appended: the fakes' record, switched off."""

    def append(self, item: T) -> None:
        pass


def soak_app(reply: str) -> FastAPI:
    """The app with fakes that answer `reply` to every turn and remember nothing."""
    asr = FakeAsr(["hello there"], streams=KeepsNothing())
    llm = FakeLlm([reply], calls=KeepsNothing())
    model = CascadeModel(asr, llm, FakeTts())
    return create_app(Settings(), model=model, vad=EnergyClassifierFactory())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.soak_server", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--reply", default="Okay, done.", help="what the fake language model answers")
    args = parser.parse_args(argv)
    print(
        f"Voxgate (instant fake models keeping no record) on ws://{args.host}:{args.port}/v1/realtime",
        flush=True,
    )
    uvicorn.run(soak_app(args.reply), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
