"""The Reply machine as timelines: what each step returns, and the state after it."""

from __future__ import annotations

import pytest

from server.errors import TurnStateError
from server.streaming.reply import Reply, ReplyPhase

Machine = Reply[str, str, str]


def reply(*, prepared: bool = False) -> Machine:
    return Reply(1, "resp_1", "item_1", with_audio=True, prepared=prepared)


def test_a_started_reply_sends_as_it_goes_and_closes_once() -> None:
    r = reply()
    assert r.is_released and r.accepts_audio
    assert r.emit("response.created") == ["response.created"]
    assert r.queue_audio("frame-1") == ["frame-1"]
    assert r.publish("UserTurn") == ["UserTurn"]
    assert r.produced_all() is True
    assert r.close() is True
    assert r.phase is ReplyPhase.DRAINING
    assert r.close() is False  # response.done goes out once
    assert r.accepts_audio  # the tail still plays
    assert r.finish() is True and r.is_finished
    assert r.finish() is False


def test_a_prepared_reply_holds_everything_until_adopted_then_releases_it_in_order() -> None:
    r = reply(prepared=True)
    assert not r.is_released and not r.accepts_audio
    assert r.emit("transcription.delta") == []
    assert r.queue_audio("frame-1") == []
    assert r.publish("UserTurn") == []
    assert r.emit("response.created") == []
    assert r.produced_all() is False  # the playout learns it at adoption
    assert r.close() is True and r.emit("response.done") == []  # closed while held: held too
    assert r.close() is False
    assert r.take_held() == ["transcription.delta", "response.created", "response.done"]
    assert r.take_held() == []
    adoption = r.adopt()
    assert (adoption.audio, adoption.published, adoption.input_done) == (["frame-1"], ["UserTurn"], True)
    assert r.is_released and r.accepts_audio
    assert r.emit("late") == ["late"]


def test_adopting_with_outputs_still_held_is_a_bug() -> None:
    r = reply(prepared=True)
    r.emit("response.created")
    with pytest.raises(TurnStateError):
        r.adopt()
    r.take_held()
    r.adopt()
    with pytest.raises(TurnStateError):
        r.adopt()


def test_a_discarded_prepared_reply_sends_nothing_ever() -> None:
    r = reply(prepared=True)
    r.emit("response.created")
    r.queue_audio("frame-1")
    r.discard()
    assert r.is_finished and not r.accepts_audio
    assert r.take_held() == []
    assert r.close() is False
    with pytest.raises(TurnStateError):
        r.adopt()


def test_a_released_reply_cannot_be_discarded_only_cancelled() -> None:
    r = reply()
    with pytest.raises(TurnStateError):
        r.discard()


def test_barge_in_stops_audio_at_once_and_closes_the_open_response() -> None:
    r = reply()
    r.queue_audio("frame-1")
    assert r.cancel() is True  # open: the caller closes it `cancelled`
    assert not r.accepts_audio
    assert r.close() is True
    assert r.finish() is True
    assert r.cancel() is False  # finished: nothing left to close


def test_a_reply_cancelled_while_draining_has_no_response_left_to_close() -> None:
    r = reply()
    assert r.close() is True
    assert r.cancel() is False
    assert not r.accepts_audio
    assert r.close() is False


def test_a_failed_reply_closes_once_as_failed_and_stops_audio() -> None:
    r = reply()
    assert r.fail() is True
    assert not r.accepts_audio
    assert r.close() is True and r.close() is False


def test_truncation_keeps_the_heard_text_and_audio_bookkeeping() -> None:
    r = reply()
    r.transcript = "It shipped on Monday and should arrive by Thursday."
    r.sent_audio(20)
    r.sent_audio(20.5)
    assert r.audio_sent_ms == 40.5
    r.truncate("It shipped on Monday")
    assert r.transcript == "It shipped on Monday" and not r.accepts_audio


def test_a_prepared_reply_that_failed_while_held_is_adopted_with_its_failure() -> None:
    r = reply(prepared=True)
    r.emit("response.created")
    assert r.fail() is True
    assert r.close() is True
    r.emit("response.done failed")
    assert r.finish() is True
    assert r.take_held() == ["response.created", "response.done failed"]
    r.adopt()
    assert r.is_released and r.is_finished and not r.accepts_audio
