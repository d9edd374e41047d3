"""Barge-in benchmark: does a server stop for real interruptions, and only for them?
`python -m loadtests.bench_barge_in --help`.

Every trial is one fresh session (see `loadtests.session`): the caller asks one question (a flite
sentence) and the server answers at length (`--instructions`, sent by `session.update`); what the
caller's microphone hears during the reply depends on the scenario:
- echo: only the room: the reply itself, played as it arrives and picked up again by the
  microphone `--echo-delay-ms` later at `--echo-db` (relative to the reply as received), through
  a synthetic room (RT60 `--rt60-s`), plus background noise (`loadtests.room`). The caller never
  speaks over the reply. One trial per (level, delay, repeat). A self-interruption is a reply
  that ends `cancelled` (`turn_detected`) or during which the server sent `speech_started`;
- backchannel: after 600-1500 ms of reply (`--after-ms`) the caller says "uh-huh", "mm-hmm",
  "yeah", "right" or "okay" (flite's four voices and espeak-ng, `loadtests.overlays`). Wanted:
  the reply completes, with a short pause (the player's longest stall that began after the
  backchannel's first voiced frame was sent);
- noise: the same, with a door slam, a cough, keyboard clicks or a burst of music;
- real: a real interruption (the corpus's sentences in flite's four voices, the same
  opening with a listener's word and a short pause, "okay ... but where is my order"
  (`loadtests.overlays.listener_led_interruptions`), and short human recordings of
  pocketsphinx-testdata), without and with echo
  (`--real-echo-db`, `--real-echo-delay-ms`), after 300-900 ms of reply (`--real-after-ms`:
  earlier than the others, since the replies run only 0.7-1.8 s). Wanted: the reply is
  `cancelled` with reason `turn_detected`, and little stale audio.

How a real interruption is counted. A trial counts when it ran and the interruption went out
mid-reply; one whose reply ended (or was cut by echo) before the interruption was due is
reported as `unsent`, not as a failure. Of those that count, a reply that was not cancelled
but whose last audio delta arrived within `CANCEL_EXPECTED_MS` (300 ms) of the interruption's
voice ended by itself while the caller began (no server could have cut it that fast): `ended`,
neither a success nor a miss. The rate is cancelled / `live`, the trials whose reply still
played 300 ms into the interruption; any other of those (completed, or ended another way) is a
miss, and so is a trial whose session timed out after the interruption went out (`stuck`: the
reply never ended, or the caller was never answered; it counts under `other`, and the bench still
exits 1). (Files written before `stale_from_voice_ms` existed are judged from the first sound.)

Stale audio is reported twice, per trial and per row (cancelled replies), because the clip's
first sound is not always its voice: `stale_audio_ms` runs from sending the interruption's
first voiced frame, as the energy envelope finds it (`loadtests.corpus.speech_span_ms`, runs of
30 ms or more), to receiving the reply's last audio delta (`BargeInResult.reaction_ms`, kept for
every ending, completed too); `stale_from_voice_ms` runs from its voice, the first voiced run of
`SUSTAINED_VOICE_MS` (100 ms) or more (`voice_start_ms`): the first less the clip's lag between
the two. They differ on a few clips only: flite kal's "where"/"why" open with a ~60 ms
aspiration and ~170 ms of near silence (230 and 220 ms), awb's "thank you" and cards-002 by 90 ms;
there the first figure reads ~330 ms where the reply stopped ~100 ms into the word. In a
listener-led clip the voice that takes the floor is the one after the pause (`voice_lag_ms`):
the reply rightly resumes after "okay" and stops again when the caller goes on, so the first
figure counts the resumed stretch too. The real rows are also split into `sentences` and
`listener-led`; `--pool` measures older files' listener-led trials again from the voice after
the pause (the clips are rebuilt from the cache).

Everything is measured through the protocol: events and audio received, on the client's clock;
it works against any server speaking the OpenAI Realtime protocol.

Servers: `--url` (one running server), `--spawn "ENV=..."` (one spawned server, as
`loadtests.bench_latency` does), or `--compare "A=ENV ..." "B=ENV ..."`: both servers are
spawned and every trial runs on each, in alternating order (A then B, then B then A), with the
same utterances and timings, so the two columns are paired and share the box's load. A spec's
`VOXGATE_BENCH_CHECKOUT=DIR` runs that server from another checkout (a worktree of an older
commit), so two code versions are compared the same way. A server that greets each session
first (`VOXGATE_GREETING`) is heard out before the question, its echo in the room, so
`--compare "first=" 'greeted=VOXGATE_GREETING="Thank you for calling."'` pairs a call's first
reply with the reply after a greeting (the trial's `greeting_ms` says it was heard).

    python -m loadtests.bench_barge_in --spawn "" --scenarios echo,backchannel,noise,real --repeat 3
    python -m loadtests.bench_barge_in --repeat 5 --out results/barge.json --compare \\
        "voice=VOXGATE_BARGE_IN_MODE=voice VOXGATE_ECHO_CANCELLATION=false" \\
        "words=VOXGATE_BARGE_IN_MODE=words VOXGATE_ECHO_CANCELLATION=true"
    git worktree add /tmp/before HEAD~1
    python -m loadtests.bench_barge_in --scenarios backchannel,real --compare \\
        "before=VOXGATE_BENCH_CHECKOUT=/tmp/before" "after="

Exit status: 0 when every trial ran without a client or server error, 1 when some had errors,
2 when the benchmark could not start (corpus, server, arguments).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from loadtests.bench_latency import (
    BenchError,
    ServerStats,
    parse_env_spec,
    session_deadline_s,
    spawned_server,
)
from loadtests.corpus import (
    DEFAULT_CACHE_DIR,
    HUMAN_DATA_DIR,
    SAMPLE_RATE_HZ,
    SUSTAINED_VOICE_MS,
    CorpusUnavailable,
    Utterance,
    load_human,
    load_synthetic,
    voice_start_ms,
)
from loadtests.overlays import listener_led_interruptions, load_backchannels, load_interruptions, noise_clips
from loadtests.recorder import TurnResult
from loadtests.room import EchoOptions, Room, RoomOptions
from loadtests.session import BargeInPlan, SessionOptions, SessionResult, TurnPlan, run_session
from loadtests.stats import summarize

Scenario = Literal["echo", "backchannel", "noise", "real"]
SCENARIOS: Final[tuple[Scenario, ...]] = ("echo", "backchannel", "noise", "real")
# long replies, so that an overlay 600-1500 ms in (a real interruption: 300-900 ms) lands
# mid-reply; Voxgate's fast profile caps a reply at two sentences, so they are asked to be long
# ones (they still come out 0.7-1.8 s long: see `real_after_ms`, `CANCEL_EXPECTED_MS`)
DEFAULT_INSTRUCTIONS: Final = (
    "You are a customer-service agent on the phone. Answer every question in two long, detailed "
    "sentences of at least twenty words each."
)
DEFAULT_MAX_OUTPUT_TOKENS: Final = 200
LINGER_MS: Final = 500  # after the reply's end: catches the speech_started that follows a cancel
HUMAN_INTERRUPTIONS: Final = ("goforward", "cards-001", "cards-002")  # short pocketsphinx clips
# A real interruption's reply that was not cancelled, and whose last audio arrived within this
# long of the interruption's voice starting, ended by itself: no server could have cut it.
# Voxgate stops sending a reply's audio once it has heard 120 ms of voice (min_speech_ms: it
# pauses the reply, and cancels it later); its VAD (Silero) hears an onset late, and the
# caller's frames and the reply's audio take their time over the transport, so ~300 ms is the
# earliest a cancel can be expected to show in the audio received.
CANCEL_EXPECTED_MS: Final = 300
ECHO_SUFFIX: Final = ", echo"  # a backchannel's or noise's variant over the real scenario's echo


# --- planning ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Trial:
    """One session: ask `question`; with an `overlay`, say it once `after_ms` of reply was heard."""

    index: int
    scenario: Scenario
    variant: str  # echo: "-12 dB"; backchannel: the word; noise: the kind; real: "clean"/"echo"
    question: Utterance
    room: RoomOptions
    overlay: Utterance | None = None
    after_ms: int = 0
    delay_ms: float | None = None  # the echo's, for the echo scenario's table by delay
    # the session first asks its question this many times and hears each reply out, so the
    # server has heard the room before the reply that is measured (a call's later replies)
    warmup_turns: int = 0


@dataclass(frozen=True, slots=True)
class Corpora:
    questions: Sequence[Utterance]
    backchannels: Sequence[Utterance]
    noises: Sequence[Utterance]
    interruptions: Sequence[Utterance]


@dataclass(frozen=True, slots=True)
class PlanOptions:
    scenarios: Sequence[Scenario]
    repeat: int = 3
    echo_dbs: Sequence[float] = (-6.0, -12.0, -20.0)
    echo_delays_ms: Sequence[float] = (30.0, 120.0, 250.0)
    rt60_s: float = 0.3
    noise_db: float | None = -60.0
    real_echo_db: float = -12.0
    real_echo_delay_ms: float = 120.0
    after_ms: tuple[int, int] = (600, 1500)  # backchannel, noise: reply heard before the overlay
    # real: earlier, since replies run 0.7-1.8 s; at 600-1500 ms many ended before the
    # interruption went out, or while the caller was speaking
    real_after_ms: tuple[int, int] = (300, 900)
    # backchannels and noises over the real scenario's echo too (a listener on a speakerphone),
    # variant "WORD, echo"
    overlay_echo: bool = False
    warmup_turns: int = 0  # replies heard out before the measured one, in every session


def plan_trials(corpora: Corpora, options: PlanOptions, rng: random.Random) -> list[Trial]:
    """The trials of every scenario, in scenario order; questions, overlays and timings drawn
    from `rng` (a run with the same seed plans the same trials). Per scenario:
    echo: every level x delay, `repeat` times; backchannel: `repeat` x every backchannel clip's
    word, the clip drawn among that word's voices; noise: `repeat` x every noise; real:
    `repeat` x (clean, echo), the interruption drawn from the interruption clips; with
    `overlay_echo`, every backchannel and noise trial is followed by the same over the real
    scenario's echo. The overlay goes out `after_ms` into the reply, drawn from `real_after_ms`
    for a real interruption and from `after_ms` otherwise."""
    trials: list[Trial] = []
    quiet = RoomOptions(noise_db=options.noise_db)

    def echo_room(level_db: float, delay_ms: float) -> RoomOptions:
        echo = EchoOptions(delay_ms=delay_ms, level_db=level_db, rt60_s=options.rt60_s)
        return RoomOptions(echo=echo, noise_db=options.noise_db)

    def add(scenario: Scenario, variant: str, room: RoomOptions, overlay: Utterance | None = None) -> None:
        after_range = options.real_after_ms if scenario == "real" else options.after_ms
        trials.append(
            Trial(
                index=len(trials),
                scenario=scenario,
                variant=variant,
                question=rng.choice(corpora.questions),
                room=room,
                overlay=overlay,
                after_ms=0 if overlay is None else rng.randint(*after_range),
                delay_ms=None if room.echo is None else room.echo.delay_ms,
                warmup_turns=options.warmup_turns,
            )
        )

    real_echo = echo_room(options.real_echo_db, options.real_echo_delay_ms)
    for scenario in options.scenarios:
        for _ in range(options.repeat):
            if scenario == "echo":
                for level in options.echo_dbs:
                    for delay in options.echo_delays_ms:
                        add("echo", f"{level:g} dB", echo_room(level, delay))
            elif scenario == "backchannel":
                words = dict.fromkeys(u.reference for u in corpora.backchannels)
                for word in words:
                    clip = rng.choice([u for u in corpora.backchannels if u.reference == word])
                    add("backchannel", word, quiet, clip)
                    if options.overlay_echo:
                        add("backchannel", f"{word}{ECHO_SUFFIX}", real_echo, clip)
            elif scenario == "noise":
                for noise in corpora.noises:
                    kind = noise.name.removeprefix("noise-")
                    add("noise", kind, quiet, noise)
                    if options.overlay_echo:
                        add("noise", f"{kind}{ECHO_SUFFIX}", real_echo, noise)
            else:
                for variant, chosen in (("clean", quiet), ("echo", real_echo)):
                    add("real", variant, chosen, rng.choice(corpora.interruptions))
    return trials


# --- outcomes (pure) -------------------------------------------------------------------------------

Status = Literal["completed", "cancelled", "cancelled_other", "incomplete", "no_reply", "error"]
# what a real interruption did to the reply: `cancelled` (turn_detected); `ended_by_itself`
# (not cancelled, its audio over within CANCEL_EXPECTED_MS of the interruption's voice: no
# verdict); `missed` (not cancelled, its audio went on past that)
RealEnding = Literal["cancelled", "ended_by_itself", "missed"]


@dataclass(frozen=True, slots=True)
class TrialOutcome:
    """What one trial's reply did (see `outcome_of`)."""

    trial: int
    config: str
    scenario: Scenario
    variant: str
    status: Status
    question: str
    overlay: str | None = None
    delay_ms: float | None = None
    overlay_sent: bool = False  # False: the reply ended before the overlay was due
    speech_started: int = 0  # speech_started events after the reply was created
    stalls: int = 0  # audible gaps in the reply (a real-time player ran dry)
    max_stall_ms: float = 0.0
    pause_ms: float | None = None  # the longest gap that began after the overlay's first voiced frame
    stale_audio_ms: float | None = None  # overlay's first voiced frame sent -> last audio of the reply
    # the same from the overlay's voice (`voice_start_ms`): less the clip's sound before its
    # voice (a kal "where": 230 ms of aspiration and silence); None in files older than it
    stale_from_voice_ms: float | None = None
    # the overlay's voice -> the end of the reply audio a real-time player played, stopping
    # at speech_started (BargeInResult.heard_reaction_ms): the stale audio heard, the client's
    # buffer included; None in files older than it
    heard_from_voice_ms: float | None = None
    reply_audio_ms: float = 0.0
    voice_to_voice_ms: float | None = None
    error: str | None = None
    # the overlay went out and the session then timed out waiting for the reply to end: the
    # caller was left hanging (a paused reply never judged, words lost): a miss, not a bench
    # fault (status stays `error`); False in files older than it
    stuck: bool = False
    # the server greeted the session first (VOXGATE_GREETING), heard out before the question:
    # its length; None: no greeting (and in files older than it)
    greeting_ms: float | None = None

    @property
    def is_self_interrupted(self) -> bool:
        """The echo scenario's failure: the reply was cancelled, or the server heard speech."""
        return self.status in ("cancelled", "cancelled_other") or self.speech_started > 0

    @property
    def counts(self) -> bool:
        """Whether the trial measures its scenario: it ran, and any overlay went out mid-reply."""
        return self.has_run and (self.scenario == "echo" or self.overlay_sent)

    @property
    def has_run(self) -> bool:
        """The session ran and the question got a reply (or one that never ended: `stuck`)."""
        return self.stuck or (self.status != "error" and self.status != "no_reply")

    @property
    def is_overlay_unsent(self) -> bool:
        """The trial ran, but the reply ended (or was cut) before its overlay was due."""
        return self.has_run and self.overlay is not None and not self.overlay_sent

    @property
    def real_ending(self) -> RealEnding | None:
        """A counted real trial's verdict (`real_ending_of`); None for the other trials. Files
        older than `stale_from_voice_ms` are judged on `stale_audio_ms` (from the first sound)."""
        if self.scenario != "real" or not self.counts:
            return None
        if self.stuck:
            return "missed"
        stale = self.stale_audio_ms if self.stale_from_voice_ms is None else self.stale_from_voice_ms
        return real_ending_of(self.status, stale)


def real_ending_of(status: Status, stale_from_voice_ms: float | None) -> RealEnding:
    """What a real interruption did to the reply, from the reply's final status and the time
    from the interruption's voice to the reply's last audio delta: `cancelled` if it was
    cancelled (turn_detected); else `ended_by_itself` if its audio was over within
    CANCEL_EXPECTED_MS (a reply completed, or cut for another reason, before any server could
    have cancelled it); else `missed` (no time known: missed)."""
    if status == "cancelled":
        return "cancelled"
    if stale_from_voice_ms is not None and stale_from_voice_ms <= CANCEL_EXPECTED_MS:
        return "ended_by_itself"
    return "missed"


def voice_lag_ms(clip: Utterance) -> int:
    """How long after its first sound (`Utterance.speech_start_ms`, where the microphone's
    `voiced_sent_s` points) the voice that takes the floor begins (`voice_start_ms`): the
    clip's voice; in a listener-led clip ("okay ... but where is my order", a clip with a
    pause), the voice after its pause, since the listener's word before it rightly resumes the
    reply. 0 without a sustained voiced run (a noise)."""
    if clip.pause_ms is not None:
        pause_end_ms = clip.pause_ms[1]
        rest = clip.samples[pause_end_ms * SAMPLE_RATE_HZ // 1000 :]
        after = voice_start_ms(rest, SAMPLE_RATE_HZ)
        if after is not None:
            return max(0, pause_end_ms + after - clip.speech_start_ms)
    start = voice_start_ms(clip.samples, SAMPLE_RATE_HZ)
    return 0 if start is None else max(0, start - clip.speech_start_ms)


def is_listener_led(overlay: str | None) -> bool:
    """A listener-led interruption's clip (`loadtests.overlays.listener_led_interruptions`)."""
    return overlay is not None and overlay.startswith("pauses-")


def status_of(turn: TurnResult) -> Status:
    """`completed`; `cancelled` (reason `turn_detected`); `cancelled_other` (another reason);
    `incomplete` (or another final status); `no_reply` (no response at all); `error`
    (the turn ended in a client-side error: a timeout, a closed connection)."""
    if turn.error is not None:
        return "error"
    if turn.response_status is None:
        return "no_reply"
    if turn.response_status == "completed":
        return "completed"
    if turn.response_status == "cancelled":
        return "cancelled" if turn.response_reason == "turn_detected" else "cancelled_other"
    return "incomplete"


def outcome_of(trial: Trial, config: str, session: SessionResult) -> TrialOutcome:
    """The outcome of `trial` from its session: the last turn of role "turn" is the reply
    measured (those before it are `warmup_turns`)."""
    asked = [t for t in session.turns if t.role == "turn"]
    main = asked[-1] if len(asked) == trial.warmup_turns + 1 else None  # else one went missing
    errors = "; ".join(f"{e.kind}: {e.message}" for e in session.errors) or None
    base = TrialOutcome(
        trial=trial.index,
        config=config,
        scenario=trial.scenario,
        variant=trial.variant,
        status="error",
        question=trial.question.name,
        overlay=None if trial.overlay is None else trial.overlay.name,
        delay_ms=trial.delay_ms,
        error=errors,
        greeting_ms=session.greeting_ms,
    )
    if main is None:
        return base
    barge = main.barge_in
    sent = barge is not None and barge.sent
    stale = barge.reaction_ms if barge is not None and sent else None
    from_voice = heard = None
    if stale is not None and trial.overlay is not None:
        # a reply that ended between the first sound and the voice left no stale audio
        lag_ms = voice_lag_ms(trial.overlay)
        from_voice = max(0.0, stale - lag_ms)
        if barge is not None and barge.heard_reaction_ms is not None:
            heard = max(0.0, barge.heard_reaction_ms - lag_ms)
    return dataclasses.replace(
        base,
        status="error" if errors is not None else status_of(main),
        stuck=sent and any(e.kind == "timeout" for e in session.errors),
        overlay_sent=sent,
        speech_started=main.speech_started_during_reply,
        stalls=main.audio_stalls,
        max_stall_ms=main.max_audio_stall_ms,
        pause_ms=barge.max_stall_after_interrupt_ms if barge is not None and sent else None,
        stale_audio_ms=stale,
        stale_from_voice_ms=from_voice,
        heard_from_voice_ms=heard,
        reply_audio_ms=main.reply_audio_ms,
        voice_to_voice_ms=main.voice_to_voice_ms,
    )


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the report: the trials of one scenario, group and config."""

    scenario: Scenario
    group: str
    config: str
    trials: int  # all of them
    n: int  # those that count (see TrialOutcome.counts)
    completed: int
    cancelled: int  # turn_detected
    other: int  # cancelled for another reason, incomplete, or stuck (TrialOutcome.stuck)
    self_interrupted: int
    early: int  # of the trials that do not count: replies cancelled before the overlay went out
    unsent: int  # of the trials that do not count: replies that ended (or were cut) before the overlay
    ended_by_itself: int  # real, of those that count: the reply ended before a cancel was possible
    playing: int  # those that count less ended_by_itself: the reply still played CANCEL_EXPECTED_MS in
    speech_started: int  # trials with speech_started during the reply
    with_stalls: int  # trials with an audible gap in the reply
    pause_p50: float | None
    pause_p90: float | None
    pause_max: float | None
    stale_p50: float | None
    stale_p90: float | None
    stale_max: float | None
    # the same from the overlay's voice (TrialOutcome.stale_from_voice_ms); None in older files
    voice_stale_p50: float | None
    voice_stale_p90: float | None
    voice_stale_max: float | None
    # ... and as heard (TrialOutcome.heard_from_voice_ms); None in older files
    heard_p50: float | None = None
    heard_p90: float | None = None
    heard_max: float | None = None

    @property
    def rate(self) -> float | None:
        """The scenario's headline share: echo, self-interrupted; backchannel and noise,
        completed (of `n`); real, cancelled (turn_detected) of `playing`: a reply that ended
        by itself as the caller began is neither a success nor a miss."""
        if self.scenario == "real":
            return None if self.playing == 0 else self.cancelled / self.playing
        if self.n == 0:
            return None
        return (self.self_interrupted if self.scenario == "echo" else self.completed) / self.n


RATE_LABEL: Final[dict[Scenario, str]] = {
    "echo": "self-interrupted",
    "backchannel": "completed",
    "noise": "completed",
    "real": f"cancelled, of the replies still playing {CANCEL_EXPECTED_MS} ms into the interruption's voice",
}


def row_of(scenario: Scenario, group: str, config: str, outcomes: Sequence[TrialOutcome]) -> Row:
    counted = [o for o in outcomes if o.counts]
    pauses = summarize(o.pause_ms for o in counted)
    stale = summarize(o.stale_audio_ms for o in counted if o.status == "cancelled")
    voice_stale = summarize(o.stale_from_voice_ms for o in counted if o.status == "cancelled")
    heard = summarize(o.heard_from_voice_ms for o in counted if o.status == "cancelled")
    ended = sum(o.real_ending == "ended_by_itself" for o in counted)
    return Row(
        scenario=scenario,
        group=group,
        config=config,
        trials=len(outcomes),
        n=len(counted),
        completed=sum(o.status == "completed" for o in counted),
        cancelled=sum(o.status == "cancelled" for o in counted),
        other=sum(o.status in ("cancelled_other", "incomplete") or o.stuck for o in counted),
        self_interrupted=sum(o.is_self_interrupted for o in counted),
        early=sum(o.overlay is not None and not o.overlay_sent and o.is_self_interrupted for o in outcomes),
        unsent=sum(o.is_overlay_unsent for o in outcomes),
        ended_by_itself=ended,
        playing=len(counted) - ended,
        speech_started=sum(o.speech_started > 0 for o in counted),
        with_stalls=sum(o.stalls > 0 for o in counted),
        pause_p50=None if pauses is None else pauses.p50,
        pause_p90=None if pauses is None else pauses.p90,
        pause_max=None if pauses is None else pauses.max,
        stale_p50=None if stale is None else stale.p50,
        stale_p90=None if stale is None else stale.p90,
        stale_max=None if stale is None else stale.max,
        voice_stale_p50=None if voice_stale is None else voice_stale.p50,
        voice_stale_p90=None if voice_stale is None else voice_stale.p90,
        voice_stale_max=None if voice_stale is None else voice_stale.max,
        heard_p50=None if heard is None else heard.p50,
        heard_p90=None if heard is None else heard.p90,
        heard_max=None if heard is None else heard.max,
    )


def rows_of(outcomes: Sequence[TrialOutcome]) -> list[Row]:
    """Per scenario (in the order met) and config: one row per variant, then "all"; the echo
    scenario also gets one row per delay."""
    rows: list[Row] = []
    configs = list(dict.fromkeys(o.config for o in outcomes))
    for scenario in dict.fromkeys(o.scenario for o in outcomes):
        mine = [o for o in outcomes if o.scenario == scenario]
        groups: dict[str, list[TrialOutcome]] = {}
        for o in mine:
            groups.setdefault(o.variant, []).append(o)
        if scenario == "echo":
            for o in mine:
                groups.setdefault(f"{o.delay_ms:g} ms", []).append(o)
        if scenario == "real":
            for o in mine:
                groups.setdefault("listener-led" if is_listener_led(o.overlay) else "sentences", []).append(o)
        if scenario in ("backchannel", "noise") and any(o.variant.endswith(ECHO_SUFFIX) for o in mine):
            for o in mine:
                groups.setdefault("echo" if o.variant.endswith(ECHO_SUFFIX) else "clean", []).append(o)
        groups["all"] = mine
        for group, members in groups.items():
            for config in configs:
                rows.append(row_of(scenario, group, config, [o for o in members if o.config == config]))
    return rows


def _num(value: float | None, width: int = 6) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.0f}"


def format_rows(rows: Sequence[Row]) -> str:
    lines: list[str] = []
    scenario: str | None = None
    for row in rows:
        if row.scenario != scenario:
            scenario = row.scenario
            if lines:
                lines.append("")
            lines.append(
                f"== {scenario} ({RATE_LABEL[row.scenario]} = the rate) ==\n"
                f"{'group':<14}{'config':<10}{'n':>4}{'rate':>7}{'done':>6}{'cancel':>7}{'other':>6}"
                f"{'self':>5}{'spst':>5}{'gaps':>5}{'early':>6}{'unsent':>7}{'ended':>6}{'live':>5}"
                "   pause p50/p90/max ms   stale p50/p90/max ms   from voice p50/p90/max   heard p50/p90/max"
            )
        rate = "-" if row.rate is None else f"{row.rate:.0%}"
        real = row.scenario == "real"
        ended = f"{row.ended_by_itself:>6}" if real else f"{'-':>6}"
        live = f"{row.playing:>5}" if real else f"{'-':>5}"
        skipped = f" (+{row.trials - row.n})" if row.trials > row.n else ""
        lines.append(
            f"{row.group:<14}{row.config:<10}{row.n:>4}{rate:>7}{row.completed:>6}{row.cancelled:>7}"
            f"{row.other:>6}{row.self_interrupted:>5}{row.speech_started:>5}{row.with_stalls:>5}{row.early:>6}"
            f"{row.unsent:>7}{ended}{live}   "
            f"{_num(row.pause_p50)}{_num(row.pause_p90)}{_num(row.pause_max)}        "
            f"{_num(row.stale_p50)}{_num(row.stale_p90)}{_num(row.stale_max)}          "
            f"{_num(row.voice_stale_p50)}{_num(row.voice_stale_p90)}{_num(row.voice_stale_max)}   "
            f"{_num(row.heard_p50)}{_num(row.heard_p90)}{_num(row.heard_max)}{skipped}"
        )
    lines.append(
        "\nn: trials that count (ran, and the overlay went out mid-reply; (+k): k more did not); "
        "done/cancel: response.done completed / cancelled turn_detected; other: another ending, or none (stuck); "
        "self: cancelled or speech_started; spst: speech_started after the reply began; gaps: replies "
        "with an audible gap; early: replies cut (by echo) before the overlay was due; unsent: replies "
        "that ended or were cut before the overlay was due (early included); ended (real): replies not "
        f"cancelled whose audio was over within {CANCEL_EXPECTED_MS} ms of the interruption's voice, "
        "neither a success nor a miss; live (real): n less ended, the rate's denominator (live - cancel: "
        "misses); pause: longest gap after the overlay began; stale: overlay's first voiced frame sent "
        "(its first sound) -> last audio of the cancelled reply; from voice: the same from the overlay's "
        f"first voiced run of {SUSTAINED_VOICE_MS} ms or more, in a listener-led clip the first after "
        "its pause (older files: -); heard: from voice to the end of the reply audio a real-time player "
        "played, stopping at speech_started as an OpenAI client does (the client's buffer included)"
    )
    return "\n".join(lines)


# --- running ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    label: str
    url: str


async def run_trial(trial: Trial, target: Target, options: SessionOptions, seed: int) -> TrialOutcome:
    barge_in = None
    if trial.overlay is not None:
        barge_in = BargeInPlan(trial.overlay, trial.after_ms, expects_reply=trial.scenario == "real")
    warmup = [TurnPlan(trial.question)] * trial.warmup_turns  # replies heard out, no overlay
    plans = [*warmup, TurnPlan(trial.question, barge_in, linger_ms=LINGER_MS)]
    session_options = dataclasses.replace(
        options, url=target.url, deadline_s=session_deadline_s(plans, options)
    )
    room = None if trial.room.is_quiet else Room(trial.room, time.monotonic(), seed=seed + trial.index)
    session = await run_session(session_options, plans, room=room)
    return outcome_of(trial, target.label, session)


async def run_trials(
    trials: Sequence[Trial],
    targets: Sequence[Target],
    options: SessionOptions,
    seed: int,
    progress: Callable[[TrialOutcome], None] | None = None,
) -> list[TrialOutcome]:
    """Every trial on every target; the targets' order alternates from trial to trial."""
    outcomes = []
    for trial in trials:
        order = list(targets) if trial.index % 2 == 0 else list(reversed(targets))
        for target in order:
            outcome = await run_trial(trial, target, options, seed)
            outcomes.append(outcome)
            if progress is not None:
                progress(outcome)
    return outcomes


def load_corpora(scenarios: Sequence[Scenario], cache_dir: Path, data_dir: Path, seed: int) -> Corpora:
    """The clips the scenarios need; raises BenchError if one cannot be made here."""
    try:
        questions = load_synthetic(cache_dir)
        backchannels = load_backchannels(cache_dir) if "backchannel" in scenarios else []
        interruptions: list[Utterance] = []
        if "real" in scenarios:
            interruptions = load_interruptions(cache_dir) + listener_led_interruptions(cache_dir)
            with contextlib.suppress(CorpusUnavailable):  # the human clips are a bonus
                interruptions += [u for u in load_human(data_dir) if u.name in HUMAN_INTERRUPTIONS]
    except CorpusUnavailable as exc:
        raise BenchError(str(exc)) from exc
    noises = noise_clips(seed) if "noise" in scenarios else []
    return Corpora(questions, backchannels, noises, interruptions)


def only_clips(corpora: Corpora, scenarios: Sequence[Scenario], patterns: Sequence[str]) -> Corpora:
    """The clips whose names contain one of `patterns` (none: all), for a scenario that uses
    clips (backchannel, noise, real): one clip run many times, to trace it. Raises BenchError
    when a scenario is left without a clip."""
    if not patterns:
        return corpora

    def chosen(clips: Sequence[Utterance], scenario: Scenario) -> list[Utterance]:
        kept = [c for c in clips if any(p in c.name for p in patterns)]
        if scenario in scenarios and not kept:
            names = ", ".join(c.name for c in clips[:8])
            raise BenchError(f"--clips {','.join(patterns)}: no {scenario} clip matches (e.g. {names})")
        return kept

    return dataclasses.replace(
        corpora,
        backchannels=chosen(corpora.backchannels, "backchannel"),
        noises=chosen(corpora.noises, "noise"),
        interruptions=chosen(corpora.interruptions, "real"),
    )


def parse_list(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise BenchError(f"{what} takes comma-separated numbers, not {text!r}") from exc


def parse_scenarios(text: str) -> list[Scenario]:
    chosen = []
    for word in (w.strip() for w in text.split(",") if w.strip()):
        scenario = next((s for s in SCENARIOS if s == word), None)
        if scenario is None:
            raise BenchError(f"unknown scenario {word!r}; use {', '.join(SCENARIOS)}")
        chosen.append(scenario)
    return chosen


def parse_compare(specs: Sequence[str]) -> list[tuple[str, dict[str, str]]]:
    """["A=ENV=1 X=2", ...] -> [("A", {"ENV": "1", "X": "2"}), ...]; labels unique."""
    configs = []
    for spec in specs:
        label, sep, env = spec.partition("=")
        if not sep or not label or " " in label:
            raise BenchError(
                f"--compare takes LABEL=ENV... (e.g. 'voice=VOXGATE_BARGE_IN_MODE=voice'), not {spec!r}"
            )
        configs.append((label, parse_env_spec(env)))
    if len({label for label, _ in configs}) != len(configs):
        raise BenchError("--compare labels must differ")
    return configs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench_barge_in",
        description="Barge-in over a realtime server's protocol: self-interruption on echo, "
        "backchannels, noises and real interruptions.",
    )
    add = parser.add_argument
    add("--url", default="ws://127.0.0.1:8000/v1/realtime", help="realtime websocket url")
    add("--spawn", metavar="ENV", default=None, help='spawn the server with these variables ("" for none)')
    add(
        "--compare",
        nargs="+",
        metavar="LABEL=ENV",
        default=None,
        help="spawn one server per config; alternate",
    )
    add(
        "--pool",
        nargs="+",
        metavar="[LABEL=]FILE",
        default=None,
        help="report earlier runs' trials (--out files) together, each under its label (or, without "
        "one, under the configs it ran); runs nothing",
    )
    add("--scenarios", default=",".join(SCENARIOS), help="comma-separated: " + ",".join(SCENARIOS))
    add("--repeat", type=int, default=3, help="trials per scenario cell (default %(default)s)")
    add(
        "--clips",
        default="",
        help="only the clips whose names contain one of these (comma-separated), e.g. "
        "--clips sure-and-how-long: one clip many times, to trace it with the server's debug log",
    )
    add(
        "--echo-db",
        default="-6,-12,-20",
        help="echo levels, dB relative to the reply; a list needs =, e.g. --echo-db=-6,-12 (default %(default)s)",
    )
    add("--echo-delay-ms", default="30,120,250", help="echo delays (default %(default)s)")
    add("--rt60-s", type=float, default=0.3, help="the room's reverberation time (0: none)")
    add("--noise-db", type=float, default=-60.0, help="background noise dBFS RMS (default %(default)s)")
    add("--no-noise", action="store_true", help="no background noise: digital silence between words")
    add("--real-echo-db", type=float, default=-12.0, help="echo level of the real scenario's echo variant")
    add("--real-echo-delay-ms", type=float, default=120.0, help="its delay")
    add(
        "--overlay-echo",
        action="store_true",
        help="backchannels and noises also over that echo (variant 'WORD, echo'; rows clean / echo)",
    )
    add(
        "--after-ms",
        default="600-1500",
        help="reply heard before a backchannel or noise, LO-HI or LO,HI (default %(default)s)",
    )
    add(
        "--real-after-ms",
        default="300,900",
        help="reply heard before a real interruption, LO,HI or LO-HI (default %(default)s)",
    )
    add(
        "--warmup-turns",
        type=int,
        default=0,
        help="each session first asks its question this many times and hears the replies out, so "
        "the measured reply is not the session's first (the server has heard the room)",
    )
    add("--instructions", default=DEFAULT_INSTRUCTIONS, help="session instructions ('' to send none)")
    add(
        "--max-output-tokens",
        type=int,
        default=DEFAULT_MAX_OUTPUT_TOKENS,
        help="reply cap sent in session.update (default %(default)s; 0: send none)",
    )
    add("--model", default="voxgate-cascade", help="sent as ?model=")
    add("--silence-ms", type=int, default=300, help="server VAD silence_duration_ms (-1: the server's)")
    add("--reply-timeout-s", type=float, default=30.0, help="wait for a reply at most this long")
    add("--seed", type=int, default=0, help="seed of every choice (questions, clips, timings, noise)")
    add("--out", type=Path, default=None, help="write every trial and row here (JSON)")
    add("--data-dir", type=Path, default=HUMAN_DATA_DIR, help="pocketsphinx-testdata folder")
    add("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="synthesised clips cache")
    add("--spawn-timeout-s", type=float, default=180.0, help="wait this long for /healthz")
    return parser


def parse_range_ms(text: str, what: str) -> tuple[int, int]:
    """A range in ms, "LO-HI" or "LO,HI" (or one number: LO = HI) -> (LO, HI)."""
    low, sep, high = text.partition("," if "," in text else "-")
    try:
        bounds = (int(low), int(high) if sep else int(low))
    except ValueError as exc:
        raise BenchError(f"{what} takes LO-HI or LO,HI in ms, not {text!r}") from exc
    if not 0 <= bounds[0] <= bounds[1]:
        raise BenchError(f"{what}: need 0 <= LO <= HI, not {text!r}")
    return bounds


def plan_options(args: argparse.Namespace) -> PlanOptions:
    after = parse_range_ms(args.after_ms, "--after-ms")
    real_after = parse_range_ms(args.real_after_ms, "--real-after-ms")
    if args.repeat < 1:
        raise BenchError("--repeat must be at least 1")
    if args.warmup_turns < 0:
        raise BenchError("--warmup-turns cannot be negative")
    return PlanOptions(
        scenarios=parse_scenarios(args.scenarios),
        repeat=args.repeat,
        echo_dbs=parse_list(args.echo_db, "--echo-db"),
        echo_delays_ms=parse_list(args.echo_delay_ms, "--echo-delay-ms"),
        rt60_s=args.rt60_s,
        noise_db=None if args.no_noise else args.noise_db,
        real_echo_db=args.real_echo_db,
        real_echo_delay_ms=args.real_echo_delay_ms,
        after_ms=after,
        real_after_ms=real_after,
        overlay_echo=args.overlay_echo,
        warmup_turns=args.warmup_turns,
    )


@dataclass(slots=True)
class BargeInRun:
    config: dict[str, Any]
    outcomes: list[TrialOutcome]
    servers: dict[str, ServerStats]


async def run(args: argparse.Namespace, progress: Callable[[TrialOutcome], None] | None = None) -> BargeInRun:
    """Plan, (spawn,) run. Raises BenchError if it cannot start."""
    options = plan_options(args)
    if args.spawn is not None and args.compare:
        raise BenchError("--spawn and --compare exclude each other")
    corpora = load_corpora(options.scenarios, args.cache_dir, args.data_dir, args.seed)
    patterns = [p.strip() for p in args.clips.split(",") if p.strip()]
    corpora = only_clips(corpora, options.scenarios, patterns)
    trials = plan_trials(corpora, options, random.Random(args.seed))
    session = SessionOptions(
        url=args.url,
        model=args.model,
        silence_duration_ms=None if args.silence_ms < 0 else args.silence_ms,
        instructions=args.instructions or None,
        max_output_tokens=args.max_output_tokens if args.max_output_tokens > 0 else None,
        lead_silence_ms=500,
        pause_ms=500,
        reply_timeout_s=args.reply_timeout_s,
    )
    config: dict[str, Any] = {
        "argv": sys.argv[1:],
        "plan": dataclasses.asdict(options),
        "instructions": session.instructions,
        "max_output_tokens": session.max_output_tokens,
        "silence_duration_ms": session.silence_duration_ms,
        "seed": args.seed,
        "trials": len(trials),
    }
    configs = parse_compare(args.compare) if args.compare else None
    if configs is None and args.spawn is not None:
        configs = [("spawned", parse_env_spec(args.spawn))]
    servers: dict[str, ServerStats] = {}
    async with contextlib.AsyncExitStack() as stack:
        targets = [Target("url", args.url)]
        if configs is not None:
            targets = []
            for label, env in configs:
                log = Path("results") / f"barge-in-{label}.server.log"
                if args.out is not None:
                    log = args.out.with_name(f"{args.out.stem}.{label}.server.log")
                url, stats = await stack.enter_async_context(spawned_server(env, log, args.spawn_timeout_s))
                targets.append(Target(label, url))
                servers[label] = stats
        config["targets"] = {t.label: t.url for t in targets}
        config["env"] = {label: env for label, env in configs or []}
        outcomes = await run_trials(trials, targets, session, args.seed, progress)
    return BargeInRun(config, outcomes, servers)


def report_json(result: BargeInRun) -> dict[str, Any]:
    return {
        "version": 1,
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": result.config,
        "servers": {label: dataclasses.asdict(s) for label, s in result.servers.items()},
        "rows": [{**dataclasses.asdict(r), "rate": r.rate} for r in rows_of(result.outcomes)],
        "trials": [dataclasses.asdict(o) for o in result.outcomes],
    }


def _progress_line(outcome: TrialOutcome) -> None:
    extra = "" if outcome.pause_ms is None else f" pause {outcome.pause_ms:.0f} ms"
    if outcome.stale_audio_ms is not None and outcome.scenario == "real":
        extra += f" stale {outcome.stale_audio_ms:.0f} ms"
        if outcome.stale_from_voice_ms is not None:
            extra += f" (from voice {outcome.stale_from_voice_ms:.0f} ms)"
        if outcome.heard_from_voice_ms is not None:
            extra += f" heard {outcome.heard_from_voice_ms:.0f} ms"
    if outcome.real_ending is not None and outcome.real_ending != "cancelled":
        extra += f": {outcome.real_ending.replace('_', ' ')}"
    if outcome.greeting_ms is not None:
        extra += f" (after a {outcome.greeting_ms:.0f} ms greeting)"
    print(
        f"[{outcome.trial:3d} {outcome.config}] {outcome.scenario} {outcome.variant}: {outcome.status}"
        f"{'' if outcome.overlay_sent or outcome.overlay is None else ' (overlay not sent)'}"
        f", speech_started {outcome.speech_started}, gaps {outcome.stalls}{extra}"
        + (f" ERROR {outcome.error}" if outcome.error else ""),
        file=sys.stderr,
        flush=True,
    )


def pooled_outcomes(labelled: Sequence[str]) -> list[TrialOutcome]:
    """The trials of earlier runs (`--out` files), each file's under its LABEL (LABEL=FILE):
    several runs of one server pooled, or runs of two servers side by side; a FILE alone keeps
    its trials' own configs (a `--compare` run's columns, pooled with other such runs)."""
    outcomes: list[TrialOutcome] = []
    for item in labelled:
        label, sep, path = item.partition("=") if "=" in item else ("", "", item)
        if (sep and not label) or not path:
            raise BenchError(f"--pool takes LABEL=FILE or FILE, not {item!r}")
        try:
            trials = json.loads(Path(path).read_text())["trials"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BenchError(f"cannot read the trials of {path}: {exc}") from exc
        fields = set(TrialOutcome.__dataclass_fields__)
        relabel = {"config": label} if label else {}
        outcomes += [
            TrialOutcome(**{**{k: v for k, v in t.items() if k in fields}, **relabel}) for t in trials
        ]
    return _with_floor_lags(outcomes)


def _with_floor_lags(outcomes: list[TrialOutcome]) -> list[TrialOutcome]:
    """Listener-led trials of files written before `voice_lag_ms` measured from the voice
    after the pause: their `stale_from_voice_ms` measured again from it (the clips are
    deterministic: rebuilt from the cache); unchanged when the clips cannot be made here."""
    if not any(is_listener_led(o.overlay) and o.stale_audio_ms is not None for o in outcomes):
        return outcomes
    try:
        lags = {clip.name: voice_lag_ms(clip) for clip in listener_led_interruptions(DEFAULT_CACHE_DIR)}
    except CorpusUnavailable:
        return outcomes
    return [
        dataclasses.replace(o, stale_from_voice_ms=max(0.0, o.stale_audio_ms - lags[o.overlay]))
        if o.overlay in lags and o.stale_audio_ms is not None
        else o
        for o in outcomes
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.pool:
        try:
            print(format_rows(rows_of(pooled_outcomes(args.pool))))
        except BenchError as exc:
            print(f"bench_barge_in: {exc}", file=sys.stderr)
            return 2
        return 0
    try:
        result = asyncio.run(run(args, _progress_line))
    except BenchError as exc:
        print(f"bench_barge_in: {exc}", file=sys.stderr)
        return 2
    print(format_rows(rows_of(result.outcomes)))
    for label, stats in result.servers.items():
        print(f"server {label}: env {stats.env or '{}'}; log {stats.log_path}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report_json(result), indent=1))
        print(f"trials: {args.out}")
    return 1 if any(o.status == "error" for o in result.outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
