"""PlayoutBuffer with an explicit clock: pacing, lead, heard estimate, clear."""

from __future__ import annotations

from server.audio import PcmFrame
from server.streaming.playout import PlayoutBuffer, PlayoutOptions

RATE = 24_000


def buffer_with(ms: int, lead_ms: int = 100) -> PlayoutBuffer:
    buf = PlayoutBuffer(PlayoutOptions(chunk_ms=20, lead_ms=lead_ms), RATE)
    buf.begin(1)
    buf.push(PcmFrame.silence(ms, RATE))
    return buf


def test_first_burst_is_the_lead_then_real_time() -> None:
    buf = buffer_with(1000)
    first = buf.due(0)
    assert [c.frame.duration_ms for c in first] == [20.0] * 5  # 100 ms lead
    assert buf.due(0) == []
    assert buf.next_due_ms(0) == 0.0  # the next chunk is due when the client holds < 100 ms
    assert len(buf.due(20)) == 1  # one chunk per 20 ms after the burst
    assert len(buf.due(100)) == 4


def test_heard_estimate_subtracts_what_the_client_still_holds() -> None:
    buf = buffer_with(1000)
    buf.due(0)
    assert buf.heard_ms(0) == 0
    assert buf.heard_ms(60) == 60
    assert buf.heard_ms(500) == 100  # nothing more sent: it played all 100 ms and waits


def test_underrun_delays_playback() -> None:
    buf = PlayoutBuffer(PlayoutOptions(chunk_ms=20, lead_ms=100), RATE)
    buf.begin(1)
    buf.push(PcmFrame.silence(40, RATE))
    buf.due(0)  # 40 ms sent at t=0, played by t=40
    buf.push(PcmFrame.silence(40, RATE))
    buf.due(200)  # arrives late: played 200..240
    assert buf.heard_ms(220) == 60


def test_clear_drops_unsent_and_reports_heard() -> None:
    buf = buffer_with(1000)
    for t in range(0, 201, 20):
        buf.due(t)  # the writer wakes every 20 ms: 300 ms sent by t=200 (100 ms lead)
    assert buf.sent_ms == 300
    heard = buf.clear(200)
    assert heard == 200
    assert buf.due(10_000) == []
    assert buf.next_due_ms(10_000) is None


def test_begin_drops_previous_reply() -> None:
    buf = buffer_with(1000)
    buf.begin(2)
    buf.push(PcmFrame.silence(40, RATE))
    chunks = buf.due(0)
    assert {c.reply_id for c in chunks} == {2}
    assert sum(c.frame.duration_ms for c in chunks) == 40


def test_finished_after_end_input_and_playout() -> None:
    buf = buffer_with(30)
    assert not buf.is_sent()
    buf.end_input()
    chunks = buf.due(0)
    assert [c.frame.duration_ms for c in chunks] == [20.0, 10.0]
    assert buf.is_sent()
    assert not buf.is_finished(29)
    assert buf.is_finished(30)


def test_audio_at_another_rate_is_resampled_not_refused() -> None:
    """A reply begun before a session.update changed the output format still plays out."""
    buf = PlayoutBuffer(PlayoutOptions(chunk_ms=20, lead_ms=100), 8_000)
    buf.begin(1)
    buf.push(PcmFrame.silence(100, 24_000))
    buf.end_input()
    chunks = buf.due(0)
    assert chunks and all(c.frame.sample_rate_hz == 8_000 for c in chunks)
    assert sum(c.frame.duration_ms for c in chunks) == 100


def test_pause_holds_the_rest_and_resume_goes_on_where_it_stopped() -> None:
    buf = buffer_with(1000)
    sent = buf.due(0) + buf.due(20) + buf.due(40)  # 140 ms sent; the client plays until 140
    buf.pause(40)
    assert buf.is_paused
    assert buf.due(60) == [] and buf.due(500) == []
    assert buf.next_due_ms(500) is None
    assert buf.heard_ms(500) == 140  # it played out what it held, nothing more
    # silence heard: from when the client ran dry (140) to the resumption
    assert buf.resume(500) == 360
    resumed = buf.due(500)
    assert [c.offset_ms for c in resumed] == [140.0, 160.0]  # no gap, no repeat (a soft lead: below)
    assert sum(c.frame.duration_ms for c in sent + resumed) == 180


def test_a_pause_shorter_than_the_lead_is_never_heard() -> None:
    buf = buffer_with(1000)
    buf.due(0)  # 100 ms held by the client
    buf.pause(0)
    assert buf.resume(60) == 0.0


def test_clear_ends_a_pause() -> None:
    buf = buffer_with(1000)
    buf.due(0)
    buf.pause(10)
    assert buf.clear(50) == 50
    assert not buf.is_paused
    assert buf.resume(60) == 0.0


def test_after_a_resume_the_lead_grows_back_from_resume_lead() -> None:
    """A caller who goes on just after a backchannel pauses the reply again at once: the
    client holds 40 ms then, not the whole lead."""
    buf = PlayoutBuffer(
        PlayoutOptions(chunk_ms=20, lead_ms=100, resume_lead_ms=40, resume_lead_ramp=0.5), RATE
    )
    buf.begin(1)
    buf.push(PcmFrame.silence(1000, RATE))
    buf.due(0)  # 100 ms: the client plays until 100
    buf.pause(0)
    assert buf.resume(300) == 200  # it ran dry at 100
    resumed = buf.due(300)
    assert [c.offset_ms for c in resumed] == [100.0, 120.0]  # 40 ms, not 100
    assert buf.next_due_ms(300) == 300.0  # it holds 40 ms: the lead now
    due_at = buf.next_due_ms(320)
    assert due_at is not None and due_at <= 320.0  # it holds 20 ms, the lead is 50: due already
    # 40 ms after the resume the lead is 60 ms: the client played the 40 and gets 60
    assert sum(c.frame.duration_ms for c in buf.due(340)) == 60
    for t in range(340, 600, 10):
        buf.due(t)
    # grown back 120 ms after the resume: the client holds the whole lead again
    played_out = buf.played_out_at_ms()
    assert played_out is not None and played_out - 590 >= 100


def test_a_pause_right_after_a_soft_resume_leaves_little_to_play() -> None:
    def played_after_resume(options: PlayoutOptions) -> int:
        buf = PlayoutBuffer(options, RATE)
        buf.begin(1)
        buf.push(PcmFrame.silence(2000, RATE))
        buf.due(0)
        buf.pause(0)
        buf.resume(500)
        for t in range(500, 581, 20):  # the writer wakes every 20 ms; the caller goes on at 580
            buf.due(t)
        buf.pause(580)
        return buf.heard_ms(10_000) - 150  # the client plays out all it was sent

    soft = played_after_resume(PlayoutOptions(chunk_ms=20, lead_ms=150))
    # the 80 ms since the resume and the lead then (40 + 0.25 * 80), in whole 20 ms chunks
    assert 80 + 60 <= soft < 80 + 60 + 20
    assert played_after_resume(PlayoutOptions(chunk_ms=20, lead_ms=150, resume_lead_ms=150)) >= 80 + 150
