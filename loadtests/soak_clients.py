"""The soak run's clients (`loadtests.soak` runs them): short sequential sessions and abusers.

- `sequential_sessions`: short sessions one after another until stopped: a connect and close,
  a typed turn (`conversation.item.create` + `response.create` to `response.done`), and every
  `SPOKEN_EVERY`-th a spoken turn (`loadtests.session.run_session`). Errors are counted by kind.
- `abuser`: malformed messages without pause (up to 50 per connection, then a new one); each
  must be answered with an `error` event carrying a code and a message. A message left
  unanswered, a close, or a refused connection is counted as a failure.
Every wait is bounded by `ANSWER_TIMEOUT_S`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from loadtests.corpus import Utterance
from loadtests.session import SessionOptions, TurnPlan, run_session

SPOKEN_EVERY: Final = 20  # one sequential session in this many speaks a turn
ANSWER_TIMEOUT_S: Final = 10.0


# --- sequential short sessions ----------------------------------------------------------------------


@dataclass(slots=True)
class SequentialCounts:
    sessions: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


async def _expect(ws: ClientConnection, kind: str) -> dict[str, Any]:
    """The next event of `kind`; raises on an `error` event (the well-behaved get none)."""
    async with asyncio.timeout(ANSWER_TIMEOUT_S):
        async for raw in ws:
            event = json.loads(raw)
            if event.get("type") == "error":
                raise _ServerError(str((event.get("error") or {}).get("code")))
            if event.get("type") == kind:
                return dict(event)
    raise ConnectionClosed(None, None)


class _ServerError(Exception):
    pass


async def short_session(url: str, kind: str) -> str | None:
    """One short session: "connect" (session.created, then close) or "typed" (a typed turn to
    response.done). Returns the error kind, or None."""
    try:
        async with connect(
            url, open_timeout=ANSWER_TIMEOUT_S, close_timeout=2, max_size=None, proxy=None
        ) as ws:
            await _expect(ws, "session.created")
            if kind == "typed":
                item = {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "hello"}],
                }
                await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
                await ws.send(json.dumps({"type": "response.create"}))
                done = await _expect(ws, "response.done")
                if (done.get("response") or {}).get("status") != "completed":
                    return "response_not_completed"
    except InvalidStatus as exc:
        return f"connect:{exc.response.status_code}"
    except (OSError, InvalidHandshake, InvalidURI):
        return "connect"
    except TimeoutError:
        return "timeout"
    except ConnectionClosed:
        return "closed"
    except _ServerError as exc:
        return f"server_error:{exc}"
    return None


async def sequential_sessions(
    url: str, spoken: Utterance, stop: asyncio.Event, counts: SequentialCounts, silence_ms: int
) -> None:
    """Short sessions one after another until `stop`."""
    n = 0
    while not stop.is_set():
        n += 1
        if n % SPOKEN_EVERY == 0:
            kind = "spoken"
            options = SessionOptions(
                url=url, silence_duration_ms=silence_ms, lead_silence_ms=200, pause_ms=200, deadline_s=60.0
            )
            result = await run_session(options, [TurnPlan(spoken)])
            first = result.errors[0] if result.errors else None
            error: str | None = (
                None if first is None else f"{first.kind}:{first.code}" if first.code else first.kind
            )
        else:
            kind = "connect" if n % 2 else "typed"
            error = await short_session(url, kind)
        counts.sessions += 1
        counts.by_kind[kind] += 1
        if error is not None:
            counts.errors[error] += 1


# --- abusers ------------------------------------------------------------------------------------------


def bad_messages(rng: random.Random) -> list[str | bytes]:
    """Malformed client messages; each must get an `error` event and leave the session usable."""
    huge = "x" * rng.choice((10_000, 500_000))
    return [
        "{not json",
        "[1, 2, 3]",
        json.dumps({"no_type": 1}),
        json.dumps({"type": "input_audio_buffer.explode"}),
        json.dumps({"type": "input_audio_buffer.append", "audio": "@@not base64@@"}),
        json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x00" * 3).decode()}),
        json.dumps(
            {"type": "conversation.item.truncate", "item_id": "nope", "content_index": 0, "audio_end_ms": 5}
        ),
        json.dumps({"type": "session.update", "session": {"turn_detection": {"threshold": 7}}}),
        json.dumps({"type": "session.update", "session": {"instructions": 5}}),
        json.dumps({"type": "response.create", "response": {"audio": [None]}}),
        json.dumps({"type": "response.cancel"}),
        json.dumps({"type": "input_audio_buffer.commit"}),
        json.dumps({"type": huge}),
        bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))),
    ]


@dataclass(slots=True)
class AbuseCounts:
    sessions: int = 0
    messages: int = 0
    answered: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # unanswered, closed:<code>, connect


async def _error_answer(ws: ClientConnection) -> bool:
    async with asyncio.timeout(ANSWER_TIMEOUT_S):
        async for raw in ws:
            event = json.loads(raw)
            if event.get("type") == "error":
                error = event.get("error") or {}
                return bool(error.get("code")) and bool(error.get("message"))
    return False


async def abuser(url: str, stop: asyncio.Event, counts: AbuseCounts, seed: int) -> None:
    """Sends malformed messages (up to 50 per connection, then reconnects) until `stop`."""
    rng = random.Random(seed)
    messages = bad_messages(rng)
    while not stop.is_set():
        counts.sessions += 1
        try:
            async with connect(
                url, open_timeout=ANSWER_TIMEOUT_S, close_timeout=2, max_size=None, proxy=None
            ) as ws:
                async with asyncio.timeout(ANSWER_TIMEOUT_S):
                    async for raw in ws:
                        if json.loads(raw).get("type") == "session.created":
                            break
                for _ in range(50):
                    if stop.is_set():
                        break
                    message = rng.choice(messages)
                    await ws.send(message)
                    counts.messages += 1
                    try:
                        answered = await _error_answer(ws)
                    except TimeoutError:
                        answered = False
                    if answered:
                        counts.answered += 1
                    else:
                        counts.failures["unanswered"] += 1
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            counts.failures[f"closed:{code}"] += 1
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError):
            counts.failures["connect"] += 1
            await asyncio.sleep(0.5)
