"""What a load step measured: histograms, counts, the server's view, tables, CSV and JSON.

Call order: `step = summarize_step(result, histograms, targets, server)` once per session
count (histograms from `histograms_of(result.sessions)`, or merged from worker processes);
`format_step(step)` is the printed report, `step_json(step)` its JSON form and
`write_samples_csv(steps, path)` writes one row per turn. `format_progress` is the line
printed every few seconds while a step runs.

Every latency is in ms, on the client's monotonic clock (see `loadtests.session` for where
each starts and ends). The metrics, per turn unless said (`METRICS`):
- voice_to_voice: end of the user's speech (found in the audio) -> first reply audio;
- endpoint_to_audio: the frame completing the server's end-of-turn silence sent -> first reply
  audio (with an instant model: what the gateway and the network add);
- speech_stopped, user_transcript, response_done: end of speech -> that event;
- barge_in_reaction: first interrupting frame sent -> last audio of the interrupted reply;
- audio_after_interrupt: reply audio (ms of it) received after that frame;
- audio_gap: the longest wait of a real-time player on reply audio (turns that had one);
- backchannel_pause: the longest such wait that began after a backchannel said over the reply
  went out (0 when the reply went on without one; the reply may also have been cancelled:
  see the counts);
- connect: opening the websocket -> session.created, per session.
"""

from __future__ import annotations

import csv
import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from loadtests.histogram import LatencyHistogram, LatencySummary
from loadtests.load import CallerSession, LoadResult, LoadSnapshot, is_failed_turn
from loadtests.prometheus import MetricsSnapshot, StageRow, stage_view
from loadtests.recorder import TurnResult
from loadtests.target import Target, TargetCheck, check_targets, verdict_line


@dataclass(frozen=True, slots=True)
class Metric:
    description: str
    of_turn: Callable[[TurnResult], float | None]


def _barge_in_reaction(turn: TurnResult) -> float | None:
    b = turn.barge_in
    return b.reaction_ms if b is not None and b.sent and b.expects_reply else None


def _audio_after_interrupt(turn: TurnResult) -> float | None:
    b = turn.barge_in
    return b.audio_after_interrupt_ms if b is not None and b.sent and b.expects_reply else None


def _backchannel_pause(turn: TurnResult) -> float | None:
    b = turn.barge_in
    return b.max_stall_after_interrupt_ms if b is not None and b.sent and not b.expects_reply else None


def is_self_interruption(turn: TurnResult) -> bool:
    """A reply cancelled `turn_detected` although the caller said nothing over it (no barge-in
    went out, or only a backchannel): the server heard its own echo, or noise."""
    b = turn.barge_in
    talked_over = b is not None and b.sent and b.expects_reply
    return (
        turn.role == "turn"
        and not talked_over
        and turn.response_status == "cancelled"
        and turn.response_reason == "turn_detected"
    )


METRICS: Final[dict[str, Metric]] = {
    "voice_to_voice": Metric(
        "end of the user's speech (from the audio) -> first reply audio", lambda t: t.voice_to_voice_ms
    ),
    "endpoint_to_audio": Metric(
        "frame completing the server's end-of-turn silence sent -> first reply audio",
        lambda t: t.endpoint_to_audio_ms,
    ),
    "speech_stopped": Metric(
        "end of speech -> input_audio_buffer.speech_stopped", lambda t: t.speech_stopped_ms
    ),
    "user_transcript": Metric("end of speech -> the user's transcript", lambda t: t.transcript_ms),
    "response_done": Metric("end of speech -> response.done", lambda t: t.response_done_ms),
    "barge_in_reaction": Metric(
        "first interrupting frame sent -> last audio of the interrupted reply", _barge_in_reaction
    ),
    "audio_after_interrupt": Metric(
        "reply audio received after the first interrupting frame", _audio_after_interrupt
    ),
    "audio_gap": Metric(
        "longest gap of a reply arriving slower than real time (turns with a gap)",
        lambda t: t.max_audio_stall_ms if t.audio_stalls else None,
    ),
    "backchannel_pause": Metric(
        "longest gap in the reply after a backchannel said over it began", _backchannel_pause
    ),
}
CONNECT_METRIC: Final = "connect"  # per session: connecting -> session.created
METRIC_NAMES: Final = (*METRICS, CONNECT_METRIC)


def histograms_of(sessions: Sequence[CallerSession]) -> dict[str, LatencyHistogram]:
    """One HDR histogram per metric of METRIC_NAMES."""
    turns = [turn for session in sessions for turn in session.result.turns]
    histograms = {name: LatencyHistogram.of(m.of_turn(t) for t in turns) for name, m in METRICS.items()}
    histograms[CONNECT_METRIC] = LatencyHistogram.of(s.result.connect_ms for s in sessions)
    return histograms


@dataclass(frozen=True, slots=True)
class Counts:
    """Everything counted in a step (see `count()`)."""

    callers: int
    sessions: int
    refused: int
    dropped: int
    cut: int
    turns: int
    measured: int  # turns with a voice-to-voice figure
    failed_turns: int
    replies_without_audio: int
    turns_with_gaps: int
    gaps: int
    gap_ms: float
    barge_ins: dict[str, int]
    backchannels: dict[str, int]
    self_interruptions: int  # see is_self_interruption
    malformed: int  # non-JSON or typeless events, undecodable audio
    server_errors: dict[str, int]  # error events by code
    errors: dict[str, int]  # client-side error records by kind
    max_lateness_ms: float
    late_frames: int

    @property
    def failed_share(self) -> float | None:
        attempts = self.turns + self.refused
        return None if attempts == 0 else (self.failed_turns + self.refused) / attempts


def count(result: LoadResult) -> Counts:
    sessions = result.sessions
    turns = result.turns()
    errors: Counter[str] = Counter()
    server_errors: Counter[str] = Counter()
    for session in sessions:
        for error in session.result.errors:
            errors[error.kind] += 1
            if error.kind == "server_error":
                server_errors[error.code or "?"] += 1
    planned = [t.barge_in for t in turns if t.barge_in is not None and t.barge_in.expects_reply]
    overlays = [t for t in turns if t.barge_in is not None and not t.barge_in.expects_reply]
    said = [t for t in overlays if t.barge_in is not None and t.barge_in.sent]
    return Counts(
        callers=result.callers,
        sessions=len(sessions),
        refused=sum(s.is_refused for s in sessions),
        dropped=sum(s.is_dropped for s in sessions),
        cut=sum(s.is_cut for s in sessions),
        turns=len(turns),
        measured=sum(t.voice_to_voice_ms is not None for t in turns),
        failed_turns=sum(is_failed_turn(t) for t in turns),
        replies_without_audio=sum(
            t.error is None and t.response_status == "completed" and t.reply_audio_ms <= 0 for t in turns
        ),
        turns_with_gaps=sum(t.audio_stalls > 0 for t in turns),
        gaps=sum(t.audio_stalls for t in turns),
        gap_ms=sum(t.audio_stall_ms for t in turns),
        barge_ins={
            "planned": len(planned),
            "sent": sum(b.sent for b in planned),
            "cancelled": sum(b.sent and b.is_cancelled_by_turn for b in planned),
            "not_cancelled": sum(b.sent and not b.is_cancelled_by_turn for b in planned),
            "reply_ended_first": sum(not b.sent for b in planned),
        },
        backchannels={
            "planned": len(overlays),
            "sent": len(said),
            "completed": sum(t.response_status == "completed" for t in said),
            "cancelled": sum(t.response_status == "cancelled" for t in said),
            "reply_ended_first": len(overlays) - len(said),
        },
        self_interruptions=sum(is_self_interruption(t) for t in turns),
        malformed=errors["protocol"] + sum(t.malformed_audio for t in turns),
        server_errors=dict(server_errors),
        errors=dict(errors),
        max_lateness_ms=max((s.result.max_frame_lateness_ms for s in sessions), default=0.0),
        late_frames=sum(s.result.late_frames for s in sessions),
    )


@dataclass(slots=True)
class ServerView:
    """The server's /metrics over the step: histogram rows and the counters that moved."""

    stages: list[StageRow]
    counters: dict[str, float]

    @classmethod
    def of(cls, delta: MetricsSnapshot) -> ServerView:
        return cls(stage_view(delta), {k: v for k, v in sorted(delta.counters.items()) if v})


@dataclass(slots=True)
class StepReport:
    sessions: int  # the concurrency asked for
    result: LoadResult
    histograms: dict[str, LatencyHistogram]
    counts: Counts
    checks: list[TargetCheck]
    server: ServerView | None = None
    server_problem: str | None = None  # why there is no server view
    summaries: dict[str, LatencySummary | None] = field(default_factory=dict)

    @property
    def is_met(self) -> bool:
        return all(check.is_met for check in self.checks)

    @property
    def verdict(self) -> str:
        return verdict_line(self.checks)


def summarize_step(
    result: LoadResult,
    histograms: Mapping[str, LatencyHistogram],
    targets: Sequence[Target],
    server: ServerView | None = None,
    server_problem: str | None = None,
) -> StepReport:
    summaries = {name: h.summary() for name, h in histograms.items()}
    counts = count(result)
    return StepReport(
        sessions=result.plan.sessions,
        result=result,
        histograms=dict(histograms),
        counts=counts,
        checks=check_targets(targets, summaries, counts.failed_share),
        server=server,
        server_problem=server_problem,
        summaries=summaries,
    )


# --- text ------------------------------------------------------------------------------------


def _ms(value: float | None, width: int = 9) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.1f}"


def format_table(summaries: Mapping[str, LatencySummary | None]) -> list[str]:
    lines = [f"{'client latency (ms)':<24}{'n':>7}{'p50':>9}{'p90':>9}{'p95':>9}{'p99':>9}{'max':>9}"]
    for name, s in summaries.items():
        if s is None:
            lines.append(f"{name:<24}{0:>7}" + _ms(None) * 5)
        else:
            lines.append(f"{name:<24}{s.n:>7}" + "".join(_ms(v) for v in (s.p50, s.p90, s.p95, s.p99, s.max)))
    return lines


def format_server(view: ServerView | None, problem: str | None) -> list[str]:
    if view is None:
        return [f"server /metrics: not available ({problem or 'not scraped'})"]
    lines = [
        f"{'server /metrics, this step (ms)':<40}{'n':>7}{'mean':>9}{'~p50':>9}{'~p95':>9}"
        "   (~: estimated from the server's buckets)"
    ]
    for row in view.stages:
        lines.append(
            f"{row.name:<40}{row.count:>7}" + "".join(_ms(v) for v in (row.mean_ms, row.p50_ms, row.p95_ms))
        )
    if not view.stages:
        lines.append("  (no histogram moved)")
    if view.counters:
        moved = ", ".join(f"{k} +{v:g}" for k, v in view.counters.items())
        lines.append(f"server counters: {moved}")
    return lines


def format_counts(step: StepReport) -> list[str]:
    c = step.counts
    r = step.result
    share = c.failed_share
    b = c.barge_ins
    lines = [
        f"sessions: {c.callers} callers opened {c.sessions} sessions ({c.sessions - c.callers} redials): "
        f"{c.refused} refused, {c.dropped} dropped, {c.cut} cut at the end",
        f"turns: {c.turns} ({c.measured} with a voice-to-voice figure), {c.failed_turns} failed "
        f"({'-' if share is None else f'{share:.1%}'} of attempts), {c.replies_without_audio} replies "
        f"without audio; audio gaps: {c.gaps} in {c.turns_with_gaps} turns ({c.gap_ms:.0f} ms)",
    ]
    if b["planned"]:
        lines.append(
            f"barge-in: {b['planned']} planned, {b['sent']} sent, {b['cancelled']} cancelled "
            f"(turn_detected), {b['not_cancelled']} not cancelled, {b['reply_ended_first']} replies ended first"
        )
    server_errors = ", ".join(f"{k} {v}" for k, v in sorted(c.server_errors.items())) or "none"
    bc = c.backchannels
    if bc["planned"]:
        rate = f"{bc['completed'] / bc['sent']:.0%}" if bc["sent"] else "-"
        lines.append(
            f"backchannels: {bc['planned']} planned, {bc['sent']} said over a reply: {bc['completed']} "
            f"replies completed ({rate}), {bc['cancelled']} cancelled; {bc['reply_ended_first']} replies "
            "ended first (pauses: backchannel_pause above)"
        )
    lines.append(
        f"self-interruptions: {c.self_interruptions} replies cancelled (turn_detected) that nobody talked over"
    )
    errors = ", ".join(f"{k} {v}" for k, v in sorted(c.errors.items())) or "none"
    lines.append(f"errors: {errors}; malformed events {c.malformed}; server error events: {server_errors}")
    cpu_share = r.client_cpu_s / r.wall_s if r.wall_s > 0 else 0.0
    lines.append(
        f"client: microphone at most {c.max_lateness_ms:.0f} ms late ({c.late_frames} frames > 20 ms late; "
        f"above 20 ms this client, not the server, lagged); {r.client_cpu_s:.1f} s CPU in "
        f"{r.wall_s:.1f} s ({cpu_share:.0%} of a core)" + ("; HARD-STOPPED" if r.hard_stopped else "")
    )
    return lines


def format_step(step: StepReport) -> str:
    lines = [f"== {step.sessions} concurrent sessions, {step.result.plan.duration_s:g} s =="]
    lines += format_table(step.summaries)
    lines.append("")
    lines += format_server(step.server, step.server_problem)
    lines.append("")
    lines += format_counts(step)
    lines.append(f"verdict: {step.verdict}")
    return "\n".join(lines)


def format_progress(
    sessions_asked: int, duration_s: float, snapshot: LoadSnapshot, voice_to_voice: LatencyHistogram
) -> str:
    s = snapshot
    latency = (
        "v2v -"
        if voice_to_voice.count == 0
        else f"v2v p50 {voice_to_voice.percentile(50):.0f} p95 {voice_to_voice.percentile(95):.0f} ms"
    )
    return (
        f"[{s.elapsed_s:5.0f}/{duration_s:.0f} s] {s.sessions_up}/{sessions_asked} up "
        f"({s.callers} started, {s.sessions - s.callers} redials, {s.refused} refused, {s.dropped} dropped) | "
        f"turns {s.turns}, failed {s.failed_turns} | {latency} | errors {s.errors} | "
        f"mic late <= {s.max_lateness_ms:.0f} ms"
    )


# --- files ------------------------------------------------------------------------------------


def step_json(step: StepReport) -> dict[str, Any]:
    r = step.result
    return {
        "sessions": step.sessions,
        "duration_s": r.plan.duration_s,
        "ramp_s": r.plan.ramp_s,
        "wall_s": r.wall_s,
        "client_cpu_s": r.client_cpu_s,
        "hard_stopped": r.hard_stopped,
        "latency_ms": {
            name: None if s is None else dataclasses.asdict(s) for name, s in step.summaries.items()
        },
        "counts": {**dataclasses.asdict(step.counts), "failed_share": step.counts.failed_share},
        "server": None
        if step.server is None
        else {
            "stages": [dataclasses.asdict(row) for row in step.server.stages],
            "counters": step.server.counters,
        },
        "server_problem": step.server_problem,
        "targets": [
            {"target": c.target.label, "limit": c.target.limit, "value": c.value, "met": c.is_met}
            for c in step.checks
        ],
        "verdict": step.verdict,
    }


CSV_FIELDS: Final = (
    "step_sessions",
    "caller",
    "attempt",
    "session_id",
    "turn",
    "role",
    "utterance",
    "source",
    "voice_to_voice_ms",
    "endpoint_to_audio_ms",
    "speech_started_ms",
    "speech_stopped_ms",
    "user_transcript_ms",
    "response_created_ms",
    "response_done_ms",
    "reply_audio_ms",
    "audio_gaps",
    "audio_gap_ms",
    "max_audio_gap_ms",
    "response_status",
    "response_reason",
    "barge_in_sent",
    "barge_in_reaction_ms",
    "audio_after_interrupt_ms",
    "malformed_audio",
    "error",
)


def _turn_row(step: int, session: CallerSession, turn: TurnResult) -> dict[str, object]:
    barge_in = turn.barge_in
    return {
        "step_sessions": step,
        "caller": session.caller,
        "attempt": session.attempt,
        "session_id": session.result.session_id or "",
        "turn": turn.index,
        "role": turn.role,
        "utterance": turn.utterance,
        "source": turn.source,
        "voice_to_voice_ms": turn.voice_to_voice_ms,
        "endpoint_to_audio_ms": turn.endpoint_to_audio_ms,
        "speech_started_ms": turn.speech_started_ms,
        "speech_stopped_ms": turn.speech_stopped_ms,
        "user_transcript_ms": turn.transcript_ms,
        "response_created_ms": turn.response_created_ms,
        "response_done_ms": turn.response_done_ms,
        "reply_audio_ms": turn.reply_audio_ms,
        "audio_gaps": turn.audio_stalls,
        "audio_gap_ms": turn.audio_stall_ms,
        "max_audio_gap_ms": turn.max_audio_stall_ms,
        "response_status": turn.response_status or "",
        "response_reason": turn.response_reason or "",
        "barge_in_sent": "" if barge_in is None else barge_in.sent,
        "barge_in_reaction_ms": _barge_in_reaction(turn),
        "audio_after_interrupt_ms": _audio_after_interrupt(turn),
        "malformed_audio": turn.malformed_audio,
        "error": turn.error or "",
    }


def _cell(value: object) -> object:
    if value is None:
        return ""
    return round(value, 3) if isinstance(value, float) else value


def write_samples_csv(steps: Sequence[StepReport], path: Path) -> int:
    """One row per turn of every step (empty cell: not measured); returns the row count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for step in steps:
            for session in step.result.sessions:
                for turn in session.result.turns:
                    row = {k: _cell(v) for k, v in _turn_row(step.sessions, session, turn).items()}
                    writer.writerow(row)
                    rows += 1
    return rows
