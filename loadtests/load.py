"""N concurrent callers against one realtime server for a set time, in one asyncio process.

Call order: `load = Load(plan, corpus)`, then `result = await load.run()`; while it runs,
`load.snapshot()` says how it is going (the progress lines). The run always ends by itself:
- caller k (of `plan.sessions`) starts at `ramp_s * k / sessions`, so connections and turns
  do not all land at once;
- at `duration_s` the stop event is set: no caller starts another turn, and each session
  closes once its current turn is over;
- every session's own deadline is `duration_s + grace_s` after the start: a turn still open
  then is cut and counted as a `deadline` error; and in case anything still runs
  `HARD_MARGIN_S` later (a bug, not a server fault), it is cancelled and `hard_stopped` set.

A caller is one simulated person on one connection (see `loadtests.session` for how a
session speaks and what it measures). It says utterances drawn at random from the corpus,
waits for each reply and is silent for a random pause (`pause_ms` range) before the next, like
a person; with probability `barge_in_rate` it talks over a reply once a random amount
(`barge_in_after_ms` range) of it has been heard, with another utterance; otherwise, with
probability `backchannel_rate`, it says a backchannel ("uh-huh", from `backchannels`) over the
reply once `backchannel_after_ms` of it has been heard, which should not interrupt it. With a
`room`, every session's microphone also hears the echo of the reply and the room's noise
(`loadtests.room`). If its session is
refused or drops (closed by the server, a stalled reply), it calls again `redial_s` later, so
the offered load stays at N; every session is kept, with its caller and attempt number.

Each caller's choices come from its own `random.Random` seeded by (`seed`, caller index):
a run is reproducible, and a caller draws the same utterances whichever process runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from loadtests.corpus import Utterance
from loadtests.recorder import TurnResult
from loadtests.room import Room, RoomOptions
from loadtests.session import BargeInPlan, SessionOptions, SessionResult, TurnPlan, run_session

HARD_MARGIN_S: Final = 5.0
MAX_TURNS_PER_SESSION: Final = 10_000
# errors that end a session (the caller then redials); `deadline` marks a turn cut at the end
FATAL_ERRORS: Final = frozenset(("connect", "timeout", "closed", "deadline"))


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """How many callers, how long, and how they behave. `session` is the template of every
    session's options (its `deadline_s` is replaced per session)."""

    session: SessionOptions
    sessions: int
    duration_s: float
    ramp_s: float = 0.0
    grace_s: float = 20.0
    barge_in_rate: float = 0.0
    barge_in_after_ms: tuple[int, int] = (300, 900)
    pause_ms: tuple[int, int] = (800, 2000)
    redial_s: float = 1.0
    seed: int = 0
    room: RoomOptions | None = None  # echo and noise mixed into every session's microphone
    backchannel_rate: float = 0.0
    backchannel_after_ms: tuple[int, int] = (600, 1500)
    backchannels: tuple[Utterance, ...] = ()
    caller_ids: range | None = None  # the callers this process runs; None: all of them

    def __post_init__(self) -> None:
        if self.sessions < 1:
            raise ValueError("sessions must be at least 1")
        if self.duration_s <= 0 or self.grace_s < 0 or self.ramp_s < 0:
            raise ValueError("duration must be positive, ramp and grace not negative")
        if not 0.0 <= self.barge_in_rate <= 1.0:
            raise ValueError("barge_in_rate must be within [0, 1]")
        if not 0.0 <= self.backchannel_rate <= 1.0:
            raise ValueError("backchannel_rate must be within [0, 1]")
        if self.backchannel_rate > 0 and not self.backchannels:
            raise ValueError("a backchannel_rate needs backchannel clips")

    @property
    def callers(self) -> range:
        return self.caller_ids if self.caller_ids is not None else range(self.sessions)


def is_failed_turn(turn: TurnResult) -> bool:
    """A turn that got no complete reply: an error, or a reply that completed without audio."""
    return turn.error is not None or (turn.response_status == "completed" and turn.reply_audio_ms <= 0)


@dataclass(slots=True)
class CallerSession:
    """One session of one caller; `result` fills in while it runs, `ended_s` is set after."""

    caller: int
    attempt: int
    started_s: float  # since the load began
    result: SessionResult
    ended_s: float | None = None

    @property
    def is_up(self) -> bool:
        return self.ended_s is None and self.result.connect_ms is not None

    @property
    def is_refused(self) -> bool:
        """Ended without ever getting `session.created` (refused, failed or timed out)."""
        return self.ended_s is not None and self.result.connect_ms is None

    @property
    def is_dropped(self) -> bool:
        """Connected, then closed by the server or stalled before the run was over."""
        return self.result.connect_ms is not None and any(
            e.kind in ("closed", "timeout") for e in self.result.errors
        )

    @property
    def is_cut(self) -> bool:
        """Still in a turn when its deadline (duration + grace) came."""
        return any(e.kind == "deadline" for e in self.result.errors)

    @property
    def ended_by_error(self) -> bool:
        return any(e.kind in FATAL_ERRORS for e in self.result.errors)


@dataclass(slots=True)
class LoadResult:
    plan: LoadPlan
    sessions: list[CallerSession] = field(default_factory=list)
    callers: int = 0  # callers that started
    wall_s: float = 0.0
    client_cpu_s: float = 0.0  # this process (all of them, merged)
    hard_stopped: bool = False

    def turns(self) -> list[TurnResult]:
        return [turn for session in self.sessions for turn in session.result.turns]


@dataclass(frozen=True, slots=True)
class LoadSnapshot:
    """Progress so far. `voice_to_voice_new`: samples since the previous snapshot."""

    elapsed_s: float
    callers: int
    sessions: int
    sessions_up: int
    refused: int
    dropped: int
    turns: int
    failed_turns: int
    errors: int
    max_lateness_ms: float
    voice_to_voice_new: tuple[float, ...] = ()


def plan_call(
    corpus: Sequence[Utterance],
    rng: random.Random,
    count: int,
    *,
    barge_in_rate: float,
    barge_in_after_ms: tuple[int, int],
    pause_ms: tuple[int, int],
    backchannel_rate: float = 0.0,
    backchannel_after_ms: tuple[int, int] = (600, 1500),
    backchannels: Sequence[Utterance] = (),
) -> list[TurnPlan]:
    """`count` turns: random utterances, random pauses, some talked over by another utterance,
    some (of the others) with a backchannel over the reply."""
    plans = []
    for _ in range(count):
        utterance = rng.choice(corpus)
        barge_in = None
        if barge_in_rate > 0 and rng.random() < barge_in_rate:
            others = [u for u in corpus if u is not utterance] or list(corpus)
            barge_in = BargeInPlan(rng.choice(others), rng.randint(*barge_in_after_ms))
        elif backchannel_rate > 0 and rng.random() < backchannel_rate:
            clip = rng.choice(backchannels)
            barge_in = BargeInPlan(clip, rng.randint(*backchannel_after_ms), expects_reply=False)
        plans.append(TurnPlan(utterance, barge_in, pause_ms=rng.randint(*pause_ms)))
    return plans


def turns_needed(corpus: Sequence[Utterance], plan: LoadPlan) -> int:
    """Enough turns to keep a caller talking for the whole run, however fast the replies."""
    shortest_s = min(u.duration_ms for u in corpus) / 1000 + plan.pause_ms[0] / 1000
    return min(MAX_TURNS_PER_SESSION, math.ceil(plan.duration_s / max(shortest_s, 0.1)) + 2)


class Load:
    """Runs a `LoadPlan`; see the module docstring."""

    def __init__(self, plan: LoadPlan, corpus: Sequence[Utterance]) -> None:
        if not corpus:
            raise ValueError("the corpus is empty")
        self.plan = plan
        self._corpus = list(corpus)
        self._result = LoadResult(plan)
        self._stop = asyncio.Event()
        self._t0 = time.monotonic()
        self._reported: dict[int, int] = {}  # id(session result) -> turns already in a snapshot

    @property
    def sessions(self) -> list[CallerSession]:
        return self._result.sessions

    async def run(self) -> LoadResult:
        plan = self.plan
        self._t0 = time.monotonic()
        cpu0 = time.process_time()
        hard_stop = self._t0 + plan.duration_s + plan.grace_s
        try:
            async with asyncio.timeout(plan.duration_s + plan.grace_s + HARD_MARGIN_S):
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self._stop_at(self._t0 + plan.duration_s), name="load-stop")
                    for k in plan.callers:
                        start = self._t0 + plan.ramp_s * k / plan.sessions
                        tasks.create_task(self._caller(k, start, hard_stop), name=f"caller-{k}")
        except TimeoutError:
            self._result.hard_stopped = True
        now = time.monotonic()
        for session in self._result.sessions:
            if session.ended_s is None:
                session.ended_s = now - self._t0
        self._result.wall_s = now - self._t0
        self._result.client_cpu_s = time.process_time() - cpu0
        return self._result

    async def _stop_at(self, when_s: float) -> None:
        await asyncio.sleep(max(0.0, when_s - time.monotonic()))
        self._stop.set()

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake up when the run stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _caller(self, caller: int, start_s: float, hard_stop_s: float) -> None:
        plan = self.plan
        await self._pause(max(0.0, start_s - time.monotonic()))
        if self._stop.is_set():
            return
        self._result.callers += 1
        rng = random.Random(f"{plan.seed}:{caller}")
        count = turns_needed(self._corpus, plan)
        attempt = 0
        while not self._stop.is_set():
            remaining_s = hard_stop_s - time.monotonic()
            if remaining_s <= 0:
                break
            turns = plan_call(
                self._corpus,
                rng,
                count,
                barge_in_rate=plan.barge_in_rate,
                barge_in_after_ms=plan.barge_in_after_ms,
                pause_ms=plan.pause_ms,
                backchannel_rate=plan.backchannel_rate,
                backchannel_after_ms=plan.backchannel_after_ms,
                backchannels=plan.backchannels,
            )
            record = CallerSession(
                caller, attempt, time.monotonic() - self._t0, SessionResult(url=plan.session.url)
            )
            self._result.sessions.append(record)
            options = dataclasses.replace(plan.session, deadline_s=remaining_s)
            room = None
            if plan.room is not None and not plan.room.is_quiet:
                room = Room(plan.room, time.monotonic(), seed=plan.seed * 1_000_003 + caller * 1009 + attempt)
            try:
                await run_session(options, turns, result=record.result, stop=self._stop, room=room)
            finally:
                record.ended_s = time.monotonic() - self._t0
            attempt += 1
            if record.ended_by_error:
                await self._pause(plan.redial_s)

    def snapshot(self) -> LoadSnapshot:
        """Counts so far, and the voice-to-voice samples measured since the last snapshot."""
        sessions = self._result.sessions
        new: list[float] = []
        turns = failed = errors = 0
        lateness = 0.0
        for session in sessions:
            result = session.result
            seen = self._reported.get(id(result), 0)
            new += [t.voice_to_voice_ms for t in result.turns[seen:] if t.voice_to_voice_ms is not None]
            self._reported[id(result)] = len(result.turns)
            turns += len(result.turns)
            failed += sum(is_failed_turn(t) for t in result.turns)
            errors += len(result.errors)
            lateness = max(lateness, result.max_frame_lateness_ms)
        return LoadSnapshot(
            elapsed_s=time.monotonic() - self._t0,
            callers=self._result.callers,
            sessions=len(sessions),
            sessions_up=sum(s.is_up for s in sessions),
            refused=sum(s.is_refused for s in sessions),
            dropped=sum(s.is_dropped for s in sessions),
            turns=turns,
            failed_turns=failed,
            errors=errors,
            max_lateness_ms=lateness,
            voice_to_voice_new=tuple(new),
        )
