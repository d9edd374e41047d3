"""measure_overlaps: the offline replay of the barge-in rules (real VAD and recogniser)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from loadtests import measure_overlaps
from loadtests.overlays import load_backchannels, load_interruptions, noise_clips
from loadtests.room import EchoOptions
from server.model.backends import pocketsphinx_asr
from server.model.backends.pocketsphinx_listener import write_listener_model
from server.streaming.interruptions import InterruptionPolicy
from server.vad import silero


@pytest.mark.parametrize("flag", ["--residual-vad", "--asr-behind-canceller", "--greeting"])
def test_what_listens_to_the_echo_needs_an_echo(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        measure_overlaps.main([flag])
    assert exited.value.code == 2
    assert f"{flag} needs --echo-db" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("espeak-ng"), reason="the reply's echo is spoken by espeak-ng")
def test_music_over_the_echo_is_the_echo_behind_a_canceller(tmp_path: Path) -> None:
    """Music over a -12 dB echo: the gate passes the loud frames and Silero hears the echo's
    speech in them, so the words the recogniser makes of the echo cancel the reply; behind
    WebRTC's canceller the VAD hears no voice, and nothing is even paused."""
    reply16 = measure_overlaps.in_reply_voice(measure_overlaps.REPLY_TEXT, tmp_path)
    echo = (reply16, EchoOptions(delay_ms=120.0, level_db=-12.0))
    music = next(clip for clip in noise_clips(0) if clip.name == "noise-music")  # as the bench draws it
    vad, config = silero.load(), pocketsphinx_asr.decoder_settings()

    def replayed(residual_vad: bool) -> measure_overlaps.Outcome:
        return measure_overlaps.replay(music, "noise", vad, config, echo=echo, residual_vad=residual_vad)

    assert replayed(residual_vad=False).cancelled
    behind_canceller = replayed(residual_vad=True)
    assert not behind_canceller.cancelled


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("espeak-ng"), reason="the reply's echo is spoken by espeak-ng")
def test_a_listener_early_in_the_first_reply_meets_a_room_not_yet_heard_to_echo(tmp_path: Path) -> None:
    """`lead_ms` puts the clip earlier in the session's first reply. kal's "okay" 500 ms in,
    over a -12 dB echo, goes on; 300 ms in, too little of the echo has been masked before it
    for the room to count as echoing, so the words the recogniser makes of the echo ("the one
    hundred") are taken for the caller's, and cancel the reply: the live bench's remaining
    losses (BENCHMARKS.md, "Knowing the room early"). A change that turns this case must
    update this test. After a greeting the caller let play out, the room is known, and the
    same "okay" 300 ms into the next reply does not cancel it."""
    reply16 = measure_overlaps.in_reply_voice(measure_overlaps.REPLY_TEXT, tmp_path)
    echo = (reply16, EchoOptions(delay_ms=120.0, level_db=-12.0))
    okay = next(clip for clip in load_backchannels(tmp_path) if clip.name == "bc-okay-flite-kal")
    vad, config = silero.load(), pocketsphinx_asr.decoder_settings()

    greeting16 = measure_overlaps.in_reply_voice(measure_overlaps.GREETING_TEXT, tmp_path)

    def replayed(lead_ms: int, greeted: bool = False) -> measure_overlaps.Outcome:
        return measure_overlaps.replay(
            okay,
            "backchannel",
            vad,
            config,
            echo=echo,
            lead_ms=lead_ms,
            greeting=greeting16 if greeted else None,
        )

    assert replayed(500).kind == "resumed:backchannel"
    early = replayed(300)
    assert early.kind == "cancelled"
    assert early.decided_after_ms is not None and early.decided_after_ms < 1000
    after_greeting = replayed(300, greeted=True)
    assert not after_greeting.cancelled
    assert not after_greeting.greeting_cancelled
    # ... while a caller's question there still cancels it
    question = next(clip for clip in load_interruptions(tmp_path) if clip.name == "int-kal-where-is-my-order")
    asked = measure_overlaps.replay(
        question, "interruption", vad, config, echo=echo, lead_ms=300, greeting=greeting16
    )
    assert asked.kind == "cancelled"


def test_the_client_buffer_hides_a_pause_shorter_than_the_lead() -> None:
    """The caller hears silence only once a pause outlasts what the client held: the full
    lead (150 ms) while the reply played on, less just after a resume (40 ms, growing back)."""
    client = measure_overlaps.ClientBuffer()
    client.pause(1000)
    client.resume(1120)  # 120 ms < 150 ms held: never heard
    assert client.silent_ms == 0
    client.pause(1140)  # 20 ms after the resume the client holds 40 + 0.25 * 20 = 45 ms or what was left
    held = client.held_ms(1140)
    assert 40 <= held < 150
    client.resume(1340)
    assert client.silent_ms == pytest.approx(200 - held)
    assert client.held_ms(1340 + 1000) == 150  # grown back


@pytest.mark.slow
def test_a_listeners_long_okay_is_talked_over_in_a_quiet_room(tmp_path: Path) -> None:
    """flite kal's "okay" (700 ms of voice), replayed through the server's VAD and recogniser:
    the reply talks on under it once the recogniser has heard "oh" (its start), and the caller
    hears no gap; with talking on turned off, the reply stays paused for the whole word."""
    okay = next(clip for clip in load_backchannels(tmp_path) if clip.name == "bc-okay-flite-kal")
    vad, config = silero.load(), pocketsphinx_asr.decoder_settings()

    def replayed(talk_over_after_ms: int) -> measure_overlaps.Outcome:
        policy = InterruptionPolicy(talk_over_after_ms=talk_over_after_ms)
        return measure_overlaps.replay(okay, "backchannel", vad, config, policy=policy)

    talked_over, paused = replayed(250), replayed(0)
    assert talked_over.kind == paused.kind == "resumed:backchannel"
    assert talked_over.silent_ms is not None and talked_over.silent_ms < 100
    assert paused.silent_ms is not None and paused.silent_ms > 400


@pytest.mark.slow
def test_a_hum_the_general_model_mishears_is_talked_over_with_the_listeners_decoder(tmp_path: Path) -> None:
    """flite rms's "mm-hmm" in a quiet room: the general model hears "bump them", so the reply
    stays paused for the whole hum; a second decoder with the listener's model (as the
    server's PocketSphinx runs one) names it, and the reply talks on under it."""
    hum = next(clip for clip in load_backchannels(tmp_path) if clip.name == "bc-mm-hmm-flite-rms")
    vad, config = silero.load(), pocketsphinx_asr.decoder_settings()
    lm, dictionary = write_listener_model(Path(str(config["lm"])), Path(str(config["dict"])), tmp_path)
    listener_config = {**config, "lm": str(lm), "dict": str(dictionary)}
    general = measure_overlaps.replay(hum, "backchannel", vad, config)
    listened = measure_overlaps.replay(hum, "backchannel", vad, config, listener_config=listener_config)
    assert general.kind == listened.kind == "resumed:backchannel"
    assert general.silent_ms is not None and general.silent_ms > 300
    assert listened.silent_ms is not None and listened.silent_ms < general.silent_ms - 200
