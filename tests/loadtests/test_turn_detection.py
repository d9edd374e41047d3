"""The benchmark's turn-detection options (--turn-detection, --eagerness, --silence-ms), the
session.update they send in each dialect, and the report's count of premature answers (the
server committing a turn inside an utterance), per corpus source."""

from __future__ import annotations

import json

import pytest

from loadtests.bench_latency import (
    BenchError,
    SourceCuts,
    TurnDetectionChoice,
    build_parser,
    format_report,
    premature_by_source,
    report_json,
    run_plans,
    turn_detection_options,
)
from loadtests.corpus import insert_pause
from loadtests.recorder import TurnResult
from loadtests.session import (
    SessionOptions,
    SessionResult,
    TurnPlan,
    run_session,
    session_update,
    silence_duration_of,
    turn_detection_request,
)
from tests.loadtests.scripted_server import Script, quick_options, scripted_server, tone_clip

# --- options ----------------------------------------------------------------------------------------


def choice_of(argv: list[str]) -> TurnDetectionChoice:
    args = build_parser().parse_args(argv)
    return turn_detection_options(args.turn_detection, args.eagerness, args.silence_ms)


def test_turn_detection_options_from_the_command_line() -> None:
    assert choice_of([]) == TurnDetectionChoice(None, None, 300)  # today's default
    assert choice_of(["--silence-ms", "500"]) == TurnDetectionChoice(None, None, 500)
    assert choice_of(["--silence-ms", "-1"]) == TurnDetectionChoice(None, None, None)  # send nothing
    assert choice_of(["--turn-detection", "server_vad", "--silence-ms", "250"]) == TurnDetectionChoice(
        "server_vad", None, 250
    )
    assert choice_of(["--turn-detection", "server_vad", "--silence-ms", "-1"]) == TurnDetectionChoice(
        "server_vad", None, None
    )
    assert choice_of(["--turn-detection", "semantic_vad"]) == TurnDetectionChoice("semantic_vad", None, None)
    assert choice_of(["--turn-detection", "semantic_vad", "--eagerness", "low"]) == TurnDetectionChoice(
        "semantic_vad", "low", None
    )


def test_turn_detection_options_that_mean_nothing_are_refused() -> None:
    with pytest.raises(BenchError, match="semantic_vad has none"):
        choice_of(["--turn-detection", "semantic_vad", "--silence-ms", "500"])
    with pytest.raises(BenchError, match="needs --turn-detection semantic_vad"):
        choice_of(["--eagerness", "high"])
    with pytest.raises(BenchError, match="needs --turn-detection semantic_vad"):
        choice_of(["--turn-detection", "server_vad", "--eagerness", "high"])
    with pytest.raises(BenchError, match="--eagerness takes"):
        turn_detection_options("semantic_vad", "eager", None)
    with pytest.raises(SystemExit):  # argparse's choices, before that
        build_parser().parse_args(["--turn-detection", "vad"])
    with pytest.raises(ValueError, match="no silence_duration_ms"):
        SessionOptions(url="ws://x", turn_detection="semantic_vad", silence_duration_ms=500)


# --- what session.update sends, and what is read back ------------------------------------------------


def test_turn_detection_request_for_each_choice() -> None:
    def request(**fields: object) -> object:
        return turn_detection_request(SessionOptions(url="ws://x", **fields))  # type: ignore[arg-type]

    assert request() is None  # keep the server's own: no session.update at all
    assert request(silence_duration_ms=300) == {"type": "server_vad", "silence_duration_ms": 300}
    assert request(turn_detection="server_vad") == {"type": "server_vad"}
    assert request(turn_detection="semantic_vad") == {"type": "semantic_vad"}
    assert request(turn_detection="semantic_vad", eagerness="auto") == {
        "type": "semantic_vad",
        "eagerness": "auto",
    }


def test_session_update_puts_turn_detection_where_each_dialect_reads_it() -> None:
    semantic = {"type": "semantic_vad", "eagerness": "high"}
    ga = session_update(semantic, beta=False)
    assert ga["type"] == "session.update"
    assert ga["session"]["audio"]["input"]["turn_detection"] == semantic
    assert ga["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24_000}
    assert "turn_detection" not in ga["session"]
    beta = session_update(semantic, beta=True)
    assert beta["session"]["turn_detection"] == semantic
    assert beta["session"]["input_audio_format"] == "pcm16"


def test_silence_duration_is_server_vads_only() -> None:
    assert silence_duration_of({"turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}) == 500
    assert silence_duration_of({"turn_detection": {"silence_duration_ms": 200}}) == 200  # type defaults
    ga = {"audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "auto"}}}}
    assert silence_duration_of(ga) is None
    odd = {"turn_detection": {"type": "semantic_vad", "silence_duration_ms": 500}}
    assert silence_duration_of(odd) is None  # no fixed silence, whatever else the object holds
    assert silence_duration_of({"turn_detection": None}) is None


async def test_semantic_vad_is_asked_for_and_its_endpoint_metric_skipped() -> None:
    async with scripted_server(Script()) as (url, log):
        options = quick_options(url, silence_duration_ms=None, turn_detection="semantic_vad", eagerness="low")
        result = await run_session(options, [TurnPlan(tone_clip())])
        beta = await run_session(
            quick_options(url, silence_duration_ms=None, turn_detection="semantic_vad", beta=True),
            [TurnPlan(tone_clip())],
        )
    assert result.errors == [] and beta.errors == []
    assert log.session_updates[0]["audio"]["input"]["turn_detection"] == {
        "type": "semantic_vad",
        "eagerness": "low",
    }
    assert log.session_updates[1]["turn_detection"] == {"type": "semantic_vad"}
    assert result.turn_detection_sent == {"type": "semantic_vad", "eagerness": "low"}
    assert result.silence_duration_ms is None
    (turn,) = result.turns
    assert turn.voice_to_voice_ms is not None  # measured as ever...
    assert turn.endpoint_to_audio_ms is None  # ...but no silence to count an endpoint from


async def test_no_update_is_sent_to_keep_the_servers_settings() -> None:
    async with scripted_server(Script()) as (url, log):
        result = await run_session(quick_options(url, silence_duration_ms=None), [TurnPlan(tone_clip())])
    assert result.errors == [] and log.session_updates == []
    assert result.turn_detection_sent is None


# --- premature answers in the report ----------------------------------------------------------------


def turn(source: str, commits: int) -> TurnResult:
    return TurnResult(
        index=0, role="turn", utterance="u", source=source, reference="", utterance_ms=1000,
        speech_end_ms=900, commits=commits, responses=commits, response_status="completed",
    )  # fmt: skip


def test_premature_answers_are_counted_per_source_in_corpus_order() -> None:
    turns = [turn("pauses", 2), turn("pauses", 1), turn("human", 1), turn("pauses", 3), turn("synthetic", 1)]
    cuts = premature_by_source(turns)
    assert list(cuts) == ["pauses", "human", "synthetic"]
    assert cuts["pauses"] == SourceCuts(turns=3, cut=2) and cuts["pauses"].rate == pytest.approx(2 / 3)
    assert cuts["human"] == SourceCuts(1, 0) and cuts["human"].rate == 0.0
    assert premature_by_source([]) == {}

    sent = {"type": "semantic_vad", "eagerness": "auto"}
    announced = {"type": "server_vad", "silence_duration_ms": 500, "threshold": 0.5}
    session = SessionResult(url="ws://x", turns=turns, turn_detection_sent=sent, turn_detection=announced)
    text = format_report([session], None)
    assert (
        "premature answers (server committed a turn inside the utterance): "
        "pauses 2/3 (66.7%), human 0/1 (0.0%), synthetic 0/1 (0.0%)"
    ) in text
    assert "utterances cut in several turns by the server: 2" in text  # the total stays
    assert (
        "turn detection: sent semantic_vad, eagerness auto; the server announced server_vad, "
        "silence 500 ms (NOT the type asked for)"
    ) in text
    report = json.loads(json.dumps(report_json({}, [session], None)))
    assert report["premature_answers"]["pauses"] == {"turns": 3, "cut": 2, "rate": pytest.approx(2 / 3)}
    assert report["sessions"][0]["turn_detection_sent"] == sent


async def test_a_server_that_ends_the_turn_in_the_pause_is_counted_premature() -> None:
    # the scripted server ends a turn after 100 ms of silence: a 500 ms pause cuts the utterance
    clip = tone_clip(lead_ms=200, tone_ms=1200, tail_ms=200)
    paused = insert_pause(clip, 800, 500, "paused")
    plans = [TurnPlan(paused), TurnPlan(tone_clip())]
    async with scripted_server(Script(reply_audio_ms=200, lead_ms=200)) as (url, _):
        sessions = await run_plans(quick_options(url), plans, session_per_utterance=False)
    (session,) = sessions
    assert [(t.source, t.commits) for t in session.turns] == [("pauses", 2), ("synthetic", 1)]
    assert session.turns[0].pause_ms == (800, 1300)
    text = format_report(sessions, None)
    assert "pauses 1/1 (100.0%), synthetic 0/1 (0.0%)" in text
    assert "turn detection: sent server_vad, silence 100 ms; the server announced nothing" in text
