"""What a caller makes heard over a reply without meaning to interrupt it: noises and backchannels.

- `noise_clips(seed)`: four room noises synthesised with numpy, each an `Utterance` (source
  "noise") padded with 100 ms of silence on both sides, its "speech" span the span of the
  sound itself (`sound_span_ms`: samples above -50 dBFS):
  - door slam: a low-passed (< 300 Hz) noise impulse with a 50 ms decay and a 55 Hz thump,
    400 ms, peak -3 dBFS;
  - cough: two band-passed (300-3000 Hz) noise bursts, 320 ms and 250 ms with a 10 ms attack
    and an exponential decay, 120 ms apart, RMS -18 dBFS over the bursts;
  - keyboard: 14 clicks (3 ms of high-passed noise, decaying within ~2 ms) every 90-130 ms,
    peak -12 dBFS;
  - music: a 1.5 s A-major chord (220, 277, 330 Hz, five harmonics each falling 6 dB per
    harmonic) with 50 ms fades, RMS -20 dBFS.
- `load_backchannels(cache_dir)`: "uh-huh", "mm-hmm", "yeah", "right", "okay" spoken by flite's
  four English voices and espeak-ng's en-us, cached as WAV files. TTS engines do not know the
  interjections: flite spells "mm-hmm" and "hmm" letter by letter ("em em aitch em em", 1.2 s),
  so it is written "um hum" (flite: ah m hh ah m, espeak: Vm hVm), the nearest these engines
  come to a closed-mouth "mm-hmm"; "uh-huh" is written "uh huh" (ah hh ah). Each clip is checked
  with `voiced_share` (pitch found in at least 30 % of its loud frames; every noise here has 0 %) and its length (`BACKCHANNEL_MAX_MS`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import NDArray

from loadtests.corpus import (
    DEFAULT_CACHE_DIR,
    FLITE_VOICE,
    SAMPLE_RATE_HZ,
    SYNTHETIC_SENTENCES,
    CorpusUnavailable,
    Utterance,
    load_pauses_synthetic,
    make_utterance,
    paused_sentences,
    read_wav,
    synthesize,
    synthesize_with_flite,
)
from loadtests.room import FULL_SCALE

FloatArray = NDArray[np.float64]
PAD_MS: Final = 100
SOUND_FLOOR_DBFS: Final = -50.0

# what the caller says -> what the TTS engines are given to say it (see the module docstring)
BACKCHANNELS: Final[dict[str, str]] = {
    "uh-huh": "uh huh",
    "mm-hmm": "um hum",
    "yeah": "yeah",
    "right": "right",
    "okay": "okay",
}
BACKCHANNEL_FLITE_VOICES: Final = ("kal", "awb", "rms", "slt")
BACKCHANNEL_ESPEAK_VOICES: Final = ("en-us",)
BACKCHANNEL_MAX_MS: Final = 1000  # speech longer than this is no "uh-huh" (a spelled word)
MIN_VOICED_SHARE: Final = 0.3  # flite kal and rms: 0.33-0.9; every noise here: 0


# --- signal helpers ---------------------------------------------------------------------------


def band_pass(x: FloatArray, low_hz: float, high_hz: float, rate_hz: int = SAMPLE_RATE_HZ) -> FloatArray:
    """`x` with every frequency outside [low_hz, high_hz] removed (an ideal FFT mask)."""
    spectrum = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(len(x), 1 / rate_hz)
    spectrum[(freqs < low_hz) | (freqs > high_hz)] = 0
    out: FloatArray = np.fft.irfft(spectrum, len(x))
    return out


def scale_to_peak(x: FloatArray, peak_dbfs: float) -> FloatArray:
    scaled: FloatArray = x * (FULL_SCALE * 10 ** (peak_dbfs / 20) / float(np.max(np.abs(x))))
    return scaled


def scale_to_rms(x: FloatArray, rms_dbfs: float) -> FloatArray:
    scaled: FloatArray = x * (FULL_SCALE * 10 ** (rms_dbfs / 20) / math.sqrt(float(np.mean(x**2))))
    return scaled


def _seconds(n_ms: float) -> int:
    return round(n_ms * SAMPLE_RATE_HZ / 1000)


def sound_span_ms(samples: NDArray[np.int16], floor_dbfs: float = SOUND_FLOOR_DBFS) -> tuple[int, int] | None:
    """(first, last + 1) sample above `floor_dbfs` in absolute value, in whole ms; None if none."""
    loud = np.flatnonzero(np.abs(samples.astype(np.float64)) >= FULL_SCALE * 10 ** (floor_dbfs / 20))
    if len(loud) == 0:
        return None
    per_ms = SAMPLE_RATE_HZ / 1000
    return math.floor(loud[0] / per_ms), math.ceil((loud[-1] + 1) / per_ms)


# --- noises --------------------------------------------------------------------------------------


def door_slam(rng: np.random.Generator) -> FloatArray:
    n = _seconds(400)
    t = np.arange(n) / SAMPLE_RATE_HZ
    body = band_pass(rng.standard_normal(n), 20, 300) * np.exp(-t / 0.05)
    thump = np.sin(2 * np.pi * 55 * t) * np.exp(-t / 0.08)
    return scale_to_peak(body / np.max(np.abs(body)) + 0.7 * thump, -3.0)


def _burst(rng: np.random.Generator, ms: float) -> FloatArray:
    n = _seconds(ms)
    t = np.arange(n) / SAMPLE_RATE_HZ
    attack = np.minimum(1.0, t / 0.010)
    envelope = attack * np.exp(-t / (ms / 1000 / 3))
    burst: FloatArray = band_pass(rng.standard_normal(n), 300, 3000) * envelope
    return burst


def cough(rng: np.random.Generator) -> FloatArray:
    first, second = _burst(rng, 320), _burst(rng, 250)
    sound = np.concatenate((first, np.zeros(_seconds(120)), second))
    bursts = np.concatenate((first, second))
    return sound * (FULL_SCALE * 10 ** (-18 / 20) / math.sqrt(float(np.mean(bursts**2))))


KEYBOARD_CLICKS: Final = 14


def keyboard(rng: np.random.Generator) -> FloatArray:
    click_n = _seconds(3)
    decay = np.exp(-np.arange(click_n) / (SAMPLE_RATE_HZ * 0.0007))
    gaps_ms = rng.uniform(90, 130, KEYBOARD_CLICKS - 1)
    starts = np.concatenate(([0], np.cumsum([_seconds(g) for g in gaps_ms]))).astype(int)
    out = np.zeros(int(starts[-1]) + click_n)
    for start in starts:
        click = band_pass(rng.standard_normal(click_n * 4), 2000, 10_000)[:click_n] * decay
        out[start : start + click_n] += click / np.max(np.abs(click))
    return scale_to_peak(out, -12.0)


MUSIC_CHORD_HZ: Final = (220.0, 277.18, 329.63)


def music(rng: np.random.Generator) -> FloatArray:
    n = _seconds(1500)
    t = np.arange(n) / SAMPLE_RATE_HZ
    out = np.zeros(n)
    for root in MUSIC_CHORD_HZ:
        phase = rng.uniform(0, 2 * np.pi)
        for harmonic in range(1, 6):
            out += 10 ** (-6 * (harmonic - 1) / 20) * np.sin(2 * np.pi * root * harmonic * t + phase)
    fade = _seconds(50)
    ramp = np.linspace(0.0, 1.0, fade)
    out[:fade] *= ramp
    out[-fade:] *= ramp[::-1]
    return scale_to_rms(out, -20.0)


NOISES: Final[dict[str, Callable[[np.random.Generator], FloatArray]]] = {
    "door_slam": door_slam,
    "cough": cough,
    "keyboard": keyboard,
    "music": music,
}


def noise_utterance(name: str, sound: FloatArray) -> Utterance:
    """`sound` padded with `PAD_MS` of silence each side, as an Utterance whose span is the sound's."""
    pad = np.zeros(_seconds(PAD_MS))
    samples = np.clip(np.round(np.concatenate((pad, sound, pad))), -32768, 32767).astype(np.int16)
    span = sound_span_ms(samples)
    if span is None:
        raise ValueError(f"noise {name!r} is silent")
    return Utterance(
        name=f"noise-{name}",
        samples=samples,
        reference="",
        source="noise",
        speech_start_ms=span[0],
        speech_end_ms=span[1],
    )


def noise_clips(seed: int = 0, kinds: Sequence[str] = tuple(NOISES)) -> list[Utterance]:
    """One clip of each kind (see the module docstring), drawn from a generator seeded by `seed`."""
    rng = np.random.default_rng(seed)
    return [noise_utterance(kind, NOISES[kind](rng)) for kind in kinds]


# --- backchannels --------------------------------------------------------------------------------


def voiced_share(samples: NDArray[np.int16], rate_hz: int = SAMPLE_RATE_HZ) -> float:
    """The share of the clip's loud 30 ms frames (RMS within 20 dB of the loudest) that hold a
    pitch: a normalised autocorrelation peak >= 0.5 at a lag of 70-400 Hz. Speech is mostly
    voiced; a spelled or garbled word still is, a click or hiss is not."""
    frame = rate_hz * 30 // 1000
    x = samples.astype(np.float64)
    frames = [x[i : i + frame] for i in range(0, len(x) - frame + 1, frame)]
    if not frames:
        return 0.0
    rms = np.array([math.sqrt(float(np.mean(f**2))) for f in frames])
    loud = [f for f, r in zip(frames, rms, strict=True) if r > 0 and r >= rms.max() * 0.1]
    lags = range(rate_hz // 400, rate_hz // 70 + 1)
    voiced = 0
    for f in loud:
        f = f - f.mean()
        energy = float(np.dot(f, f))
        if energy == 0:
            continue
        best = max(float(np.dot(f[:-lag], f[lag:])) / energy for lag in lags if lag < len(f))
        voiced += best >= 0.5
    return voiced / len(loud) if loud else 0.0


def synthesize_with_espeak(text: str, path: Path, voice: str, timeout_s: float = 60.0) -> None:
    synthesize("espeak-ng", ["-v", voice, "-w", "{out}", text], text, path, timeout_s)


def spoken(engine: str, voice: str, text: str, cache_dir: Path) -> tuple[NDArray[np.int16], int]:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    path = cache_dir / f"{engine}-{voice}-{slug}.wav"
    if not path.exists():
        if engine == "flite":
            synthesize_with_flite(text, path, voice)
        else:
            synthesize_with_espeak(text, path, voice)
    return read_wav(path)


def load_backchannels(
    cache_dir: Path = DEFAULT_CACHE_DIR,
    words: Sequence[str] = tuple(BACKCHANNELS),
    flite_voices: Sequence[str] = BACKCHANNEL_FLITE_VOICES,
    espeak_voices: Sequence[str] = BACKCHANNEL_ESPEAK_VOICES,
) -> list[Utterance]:
    """Every word in every voice (named `bc-WORD-ENGINE-VOICE`), source "synthetic"; raises
    CorpusUnavailable when a clip cannot be made or fails its checks (too long, unvoiced)."""
    clips = []
    voices = [("flite", v) for v in flite_voices] + [("espeak", v) for v in espeak_voices]
    for word in words:
        for engine, voice in voices:
            samples, rate = spoken(engine, voice, BACKCHANNELS[word], cache_dir)
            clip = make_utterance(f"bc-{word}-{engine}-{voice}", samples, rate, word, "synthetic")
            speech = clip.samples[
                clip.speech_start_ms * SAMPLE_RATE_HZ // 1000 : clip.speech_end_ms * SAMPLE_RATE_HZ // 1000
            ]
            span_ms = clip.speech_end_ms - clip.speech_start_ms
            if span_ms > BACKCHANNEL_MAX_MS or voiced_share(speech) < MIN_VOICED_SHARE:
                raise CorpusUnavailable(
                    f"{clip.name}: {span_ms} ms of speech, {voiced_share(speech):.0%} voiced: no backchannel"
                )
            clips.append(clip)
    return clips


INTERRUPTION_VOICES: Final = ("kal", "awb", "rms", FLITE_VOICE)


# interruptions that open with a listener's word and a short pause: a caller often takes the
# floor with "okay, but ..." (written with the rule that follows them, turns.py's rejoin, so
# not held out)
LISTENER_LED_INTERRUPTIONS: Final[tuple[tuple[str, str], ...]] = (
    ("okay", "but where is my order"),
    ("yeah", "no that is the wrong address"),
    ("thank you", "that is all for today"),
    ("right", "can i talk to a human agent"),
    ("sure", "and how long will the refund take"),
    ("okay", "i want to cancel my subscription"),
    ("yes", "my package arrived damaged"),
    ("um hum", "so when does the technician come"),
    ("alright", "please change my delivery address"),
    ("i see", "why was my card charged twice"),
)
LISTENER_LED_PAUSES_MS: Final = (200, 300, 400)


def load_interruptions(
    cache_dir: Path = DEFAULT_CACHE_DIR, sentences: Sequence[str] = SYNTHETIC_SENTENCES
) -> list[Utterance]:
    """The corpus's customer-service sentences as interruptions, each in one of flite's four
    English voices (cycled), named `int-VOICE-...`. (Phrases that open with a short word and a
    comma, "Wait, stop, ...", were tried: the server needs 250 ms of continuous voice, so the
    comma's pause alone added ~200 ms to the stale audio; these sentences keep the figure
    comparable with bench_latency's barge-in.)"""
    clips = []
    for i, text in enumerate(sentences):
        voice = INTERRUPTION_VOICES[i % len(INTERRUPTION_VOICES)]
        samples, rate = spoken("flite", voice, text, cache_dir)
        slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
        clips.append(make_utterance(f"int-{voice}-{slug[:32]}", samples, rate, text, "synthetic"))
    return clips


def listener_led_interruptions(cache_dir: Path = DEFAULT_CACHE_DIR) -> list[Utterance]:
    """`LISTENER_LED_INTERRUPTIONS` in flite's four voices, cycled, with 200-400 ms of silence
    after the listener's word (the pause corpus's joining), named `pauses-VOICE-...`."""
    sentences = paused_sentences(LISTENER_LED_INTERRUPTIONS, LISTENER_LED_PAUSES_MS)
    return load_pauses_synthetic(cache_dir, sentences)
