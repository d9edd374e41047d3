"""Measure the echo gate (server/streaming/echo_gate.py) offline: how much of the reply's echo
reaches turn-taking as voice, and how much of a caller talking over it still does.

    python -m loadtests.measure_echo_gate        # ~1 min on one core

The reply: flite sentences in two voices (14 s). The microphone hears it `delay` later, `level`
down, through a 0.3 s (RT60) synthetic room (loadtests.room), over noise. Silero VAD (0.5) runs on
the microphone, and the gate zeroes the frames it calls echo; the voiced runs are those of the
server's own detector (60 ms onset, 90 ms gaps bridged), so ">= 120" is a reply paused (words
mode) and ">= 250" a barge-in. Double talk: a caller's utterance (backchannels and sentences, in
other flite voices) over the -6/-12/-20 dB echo, or none (-60): the longest voiced run the
detector builds of it, with the gate, against the 250 ms a barge-in needs. Then a session's
first seconds with a fresh gate: a short first reply's echo alone, a caller talking over it,
and a caller who answers it, pauses (their turn ends) and goes on over the next reply. A
voice's frames are settled as the server settles them (`voiced`); `--noise-teaches` and
`--onset-ms 0` give the rules before 2026-12-05.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from loadtests.corpus import read_wav, synthesize_with_flite
from loadtests.room import room_impulse_response
from server.audio import PcmFrame, resample
from server.streaming.echo_gate import EchoGate, EchoGateOptions
from server.vad import silero
from server.vad.detector import DetectorOptions, SpeechDetector, VoiceStarted

RATE = 16_000
FRAME = 512  # Silero's 32 ms
REPLY = [
    (
        "slt",
        "Your order left our warehouse this morning and it should arrive on Thursday with the tracking link.",
    ),
    (
        "awb",
        "I can also change the delivery address or send the parcel to a pickup point near you if that helps.",
    ),
]
# short first replies: a session's first reply, one sentence, after the caller's question
FIRST_REPLIES = [
    ("slt", "Your parcel is on its way."),
    ("awb", "I can help you with that right now."),
    ("kal", "Sure, let me check your order for you."),
    ("rms", "Your refund was sent yesterday and should arrive within three days."),
    ("slt", "I am sorry to hear that, I will send a new one today."),
    ("awb", "Yes."),
]
QUESTION = ("kal", "my package arrived damaged yesterday")
CALLERS = [
    ("kal", "yeah"),
    ("rms", "okay"),
    ("slt", "i see"),
    ("awb", "can you repeat that"),
    ("rms", "actually I need the other one"),
]

Signal = npt.NDArray[np.float64]


def speech(voice: str, text: str, cache: Path) -> Signal:
    path = cache / f"{voice}-{abs(hash(text))}.wav"
    if not path.exists():
        synthesize_with_flite(text, path, voice=voice)
    samples, rate = read_wav(path)
    return resample(PcmFrame(samples, rate), RATE).samples.astype(np.float64)


def voiced_runs_ms(voiced: Sequence[bool]) -> list[int]:
    """The longest voiced run of each burst, as the server's detector counts it."""
    detector = SpeechDetector(DetectorOptions(threshold=0.5, min_voiced_ms=60, hangover_ms=90))
    runs: list[int] = []
    best = 0
    for i, v in enumerate(voiced):
        detector.push(1.0 if v else 0.0, i * 32, 32)
        run = detector.voiced_run_ms
        if run == 0 and best:
            runs.append(best)
            best = 0
        best = max(best, run)
    return [*runs, best] if best else runs


BARGE_IN_MS = 250  # a shorter voice is a burst: dismissed as noise, no words judged


def longest_run_ms(gated: Sequence[bool], start: int, end: int) -> int:
    """The longest voiced run the detector builds of the samples [start, end)."""
    return max(voiced_runs_ms(gated[start // FRAME : end // FRAME + 1]) or [0])


def median_least(runs: Sequence[int]) -> str:
    return f"{int(np.median(runs))} / {min(runs)}"


def voiced(
    mic: Signal,
    reference: Signal,
    options: EchoGateOptions,
    caller: range = range(0),
    *,
    noise_teaches: bool = False,
) -> tuple[list[bool], list[bool]]:
    """Per frame: Silero's voiced, and voiced with the gate (a fresh one). As in the server,
    the frames of a voice the detector hears are held by the gate until the voice ends, then
    settled as the server does: a burst shorter than a barge-in is noise (forgotten; taught with
    `noise_teaches`, the server's rule until 2026-12-05); a longer voice is judged on its
    words, here by the truth: the caller's (a voice that began inside `caller`, sample
    indices) are forgotten, the echo's taught."""
    classifier = silero.load().open(0.5)
    gate = EchoGate(options, frame_ms=32)
    detector = SpeechDetector(DetectorOptions(threshold=0.5, min_voiced_ms=60, hangover_ms=90))
    raw: list[bool] = []
    gated: list[bool] = []
    voice_start: int | None = None
    onset_ms = 0
    for i in range(0, len(mic) - FRAME + 1, FRAME):
        frame = PcmFrame(np.clip(mic[i : i + FRAME], -32768, 32767).astype(np.int16), RATE)
        ref = PcmFrame(np.clip(reference[i : i + FRAME], -32768, 32767).astype(np.int16), RATE)
        is_voiced = classifier.speech_probability(frame) > 0.5
        is_echo = gate.is_echo(frame, ref, hold=voice_start is not None)
        raw.append(is_voiced)
        gated.append(is_voiced and not is_echo)
        for event in detector.push(1.0 if gated[-1] else 0.0, len(gated) * 32, 32):
            if isinstance(event, VoiceStarted):
                voice_start, onset_ms = i, event.at_ms
            elif voice_start is not None:
                if event.at_ms - onset_ms < BARGE_IN_MS:
                    gate.settle_held(echo=noise_teaches)
                else:
                    gate.settle_held(echo=voice_start not in caller)
                voice_start = None
    return raw, gated


def microphone(reply: Signal, level_db: float, delay_ms: int, near: Signal | None, at: int) -> Signal:
    echo = np.convolve(reply, room_impulse_response(0.3, rate_hz=RATE))[: len(reply)] * 10 ** (level_db / 20)
    mic = np.random.default_rng(0).normal(0, 30, len(reply) + RATE)
    delay = RATE * delay_ms // 1000
    mic[delay : delay + len(echo)] += echo[: len(mic) - delay]
    if near is not None:
        mic[at : at + len(near)] += near
    return mic


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.measure_echo_gate", description=__doc__)
    parser.add_argument("--margin-db", type=float, default=EchoGateOptions().margin_db)
    parser.add_argument("--return-quantile", type=float, default=EchoGateOptions().return_quantile)
    parser.add_argument("--unaligned-quantile", type=float, default=EchoGateOptions().unaligned_quantile)
    parser.add_argument(
        "--onset-ms", type=int, default=EchoGateOptions().onset_ms, help="0: the gate before 2026-12-05"
    )
    parser.add_argument(
        "--noise-teaches",
        action="store_true",
        help="a burst dismissed as noise teaches the echo's level (the server's rule before 2026-12-05)",
    )
    args = parser.parse_args(argv)
    options = EchoGateOptions(
        margin_db=args.margin_db,
        return_quantile=args.return_quantile,
        unaligned_quantile=args.unaligned_quantile,
        onset_ms=args.onset_ms,
    )
    noise_teaches = bool(args.noise_teaches)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        reply = np.concatenate([speech(v, t, cache) for v, t in REPLY] * 2)
        callers = [(f"{v}: {t}", speech(v, t, cache)) for v, t in CALLERS]
    reference = np.zeros(len(reply) + RATE)
    reference[: len(reply)] = reply
    print(f"reply {len(reply) / RATE:.1f} s; echo alone: voiced runs >= 250 / >= 120 ms")
    print(f"{'level dB':>8} {'delay ms':>8} {'no gate':>10} {'gate':>10}")
    for level_db in (-6, -12, -20):
        for delay_ms in (30, 120, 250):
            raw, gated = voiced(
                microphone(reply, level_db, delay_ms, None, 0),
                reference,
                options,
                noise_teaches=noise_teaches,
            )
            r, g = voiced_runs_ms(raw), voiced_runs_ms(gated)
            print(
                f"{level_db:>8} {delay_ms:>8} {sum(x >= 250 for x in r):>4} / {sum(x >= 120 for x in r):<3}"
                f" {sum(x >= 250 for x in g):>4} / {sum(x >= 120 for x in g):<3}"
            )
    print(
        "\ndouble talk (echo 120 ms late): the caller's longest voiced run with the gate, ms (>= 250: heard)"
    )
    print(f"{'caller':<40}" + "".join(f"{f'{lv} dB':>9}" for lv in (-6, -12, -20, -60)))
    at = 2 * RATE
    for name, near in callers:
        cells = []
        for level_db in (-6, -12, -20, -60):
            mic = microphone(reply, level_db, 120, near, at)
            _, gated = voiced(
                mic, reference, options, caller=range(at, at + len(near)), noise_teaches=noise_teaches
            )
            cells.append(longest_run_ms(gated, at, at + len(near)))
        print(f"{name:<40}" + "".join(f"{c:>9}" for c in cells))
    first_replies(options, noise_teaches)
    first_reply_double_talk(options, noise_teaches)
    going_on_over_next_reply(options, noise_teaches)
    return 0


def first_replies(options: EchoGateOptions, noise_teaches: bool) -> None:
    """A session's first reply, one short sentence, right after the caller's question: the gate
    has heard no echo yet (its return and delay are being learned); what of the echo reaches
    turn-taking during the reply and in the second after it (its tail)?"""
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        question = speech(*QUESTION, cache)
        replies = [(text, speech(voice, text, cache)) for voice, text in FIRST_REPLIES]
    print("\nfirst replies (a fresh gate; the question, 300 ms, the reply's echo): voiced runs >= 120 ms")
    print(f"{'level dB':>8} {'delay ms':>8} {'no gate':>8} {'gate':>6}   worst reply")
    gap = RATE * 3 // 10
    for level_db in (-6, -12, -20):
        for delay_ms in (30, 120, 250):
            raw_runs = gated_runs = 0
            worst = ("", 0)
            for text, reply in replies:
                start = len(question) + gap
                reference = np.zeros(start + len(reply) + RATE)
                reference[start : start + len(reply)] = reply
                mic = microphone(reference, level_db, delay_ms, question, 0)[: len(reference)]
                raw, gated = voiced(mic, reference, options, noise_teaches=noise_teaches)
                after = start // FRAME
                r = sum(x >= 120 for x in voiced_runs_ms(raw[after:]))
                g = sum(x >= 120 for x in voiced_runs_ms(gated[after:]))
                raw_runs, gated_runs = raw_runs + r, gated_runs + g
                worst = max(worst, (text, g), key=lambda w: w[1])
            print(
                f"{level_db:>8} {delay_ms:>8} {raw_runs:>8} {gated_runs:>6}   {worst[0][:40]!r} ({worst[1]})"
            )


def first_reply_double_talk(options: EchoGateOptions, noise_teaches: bool) -> None:
    """A caller talking 600 ms into a session's short first reply (a fresh gate, the echo
    120 ms late): the longest voiced run the detector builds of them, median and least over
    the replies of more than a few words."""
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        question = speech(*QUESTION, cache)
        replies = [speech(voice, text, cache) for voice, text in FIRST_REPLIES if len(text.split()) > 4]
        callers = [(f"{v}: {t}", speech(v, t, cache)) for v, t in CALLERS]
    print(
        "\ndouble talk over a first reply (600 ms in, echo 120 ms late): longest voiced run, median / least, ms"
    )
    print(f"{'caller':<40}" + "".join(f"{f'{lv} dB':>12}" for lv in (-12, -20)))
    start = len(question) + RATE * 3 // 10
    at = start + RATE * 6 // 10
    for name, near in callers:
        cells = []
        for level_db in (-12, -20):
            runs = []
            for reply in replies:
                reference = np.zeros(start + len(reply) + RATE)
                reference[start : start + len(reply)] = reply
                mic = microphone(reference, level_db, 120, question, 0)[: len(reference)]
                mic[at : at + len(near)] += near[: len(mic) - at]
                _, gated = voiced(
                    mic, reference, options, caller=range(at, at + len(near)), noise_teaches=noise_teaches
                )
                runs.append(longest_run_ms(gated, at, at + len(near)))
            cells.append(median_least(runs))
        print(f"{name:<40}" + "".join(f"{c:>12}" for c in cells))


# a caller's short answer after the reply, then, once the turn has ended on their pause and the
# next reply has begun, the rest of their sentence (bench_barge_in's listener-led clips)
GOING_ON = [
    ("kal", "sure", "and how long will the refund take"),
    ("slt", "okay", "so when does the technician come"),
    ("awb", "yes", "and can I change the delivery address"),
    ("rms", "right", "but where is my order"),
]


def going_on_over_next_reply(options: EchoGateOptions, noise_teaches: bool) -> None:
    """The caller answers a session's first reply as it ends ("sure"), pauses, and goes on
    ("and how long will the refund take") 70 ms after the reply to "sure" began: that turn
    ended on the pause (300 ms of silence after the voice's 90 ms hangover). A fresh gate, the
    echo 120 ms late; the longest voiced run of the going-on, median / least over the replies
    (>= 250: heard, the reply cancelled)."""
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        question = speech(*QUESTION, cache)
        replies = [speech(voice, text, cache) for voice, text in FIRST_REPLIES if len(text.split()) > 4]
        callers = [(f"{v}: {a} ... {b}", speech(v, a, cache), speech(v, b, cache)) for v, a, b in GOING_ON]
    print(
        "\ngoing on over the next reply (a first reply, an answer, its turn ended, the rest): median / least"
    )
    print(f"{'caller':<48}" + "".join(f"{f'{lv} dB':>12}" for lv in (-6, -12, -20)))
    start = len(question) + RATE * 3 // 10
    for name, answer, rest in callers:
        cells = []
        for level_db in (-6, -12, -20):
            runs = []
            for first, then in zip(replies, replies[1:] + replies[:1], strict=True):
                answer_at = start + len(first) - RATE // 10
                second = answer_at + len(answer) + RATE * 39 // 100
                rest_at = second + RATE * 7 // 100
                reference = np.zeros(max(second + len(then), rest_at + len(rest)) + RATE)
                reference[start : start + len(first)] = first
                reference[second : second + len(then)] = then
                mic = microphone(reference, level_db, 120, question, 0)[: len(reference)]
                mic[answer_at : answer_at + len(answer)] += answer
                mic[rest_at : rest_at + len(rest)] += rest
                caller = range(answer_at, rest_at + len(rest))
                _, gated = voiced(mic, reference, options, caller=caller, noise_teaches=noise_teaches)
                runs.append(longest_run_ms(gated, rest_at, rest_at + len(rest)))
            cells.append(median_least(runs))
        print(f"{name:<48}" + "".join(f"{c:>12}" for c in cells))


if __name__ == "__main__":
    raise SystemExit(main())
