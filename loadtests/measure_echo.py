"""Measure echo cancellation and noise suppression of the caller's audio, before the VAD.

    python -m loadtests.measure_echo                 # both tables, every candidate installed
    python -m loadtests.measure_echo --part echo     # or --part noise
    python -m loadtests.measure_echo --seconds 6     # shorter far-end signal (default 10 s)

Echo: the far end (what the server plays) is flite speech in four voices (`loadtests.corpus`
caches the WAVs), normalised to -18 dBFS over its speech. The caller's microphone hears it
back `delay` ms later, `level` dB down, through a synthetic room (exponentially decaying
noise, RT60 0.3 s, behind a unit direct path) over pink background noise at -45 dBFS. Each
candidate sees the microphone and the far end in 10 ms blocks, at 16 kHz, and for each
delay x level the table gives:
- ERLE: echo return loss enhancement, 10*log10(mic power / output power) over the 10 ms
  blocks after the first second where the echo is at least 10 dB above the noise (so the
  noise floor caps it: at -20 dB the echo is only ~17 dB above the noise);
- runs>=250 / runs>=60: voiced runs that Silero VAD (threshold 0.5, 32 ms frames) finds in the
  output, lasting at least 250 ms (the barge-in threshold) or 60 ms: false interruptions;
- double talk (the caller speaks over the echo, human recordings of pocketsphinx-testdata at
  -24 dBFS): `near SNR` = 10*log10(A power / (output - A) power) over the near speech, where
  A is the same candidate's output for the caller alone (no echo): how much the echo and its
  cancellation change the caller's speech;
  `recall` = share of the 32 ms frames that the VAD calls voiced in the clean near speech
  (with the same noise) that it also calls voiced in the output;
- CPU: process CPU seconds per second of audio (one thread; the machine is a shared 2-core box).

Noise: noise-only clips (white, pink, coughs, keyboard clicks, a harmonic "music" line) and
human speech in pink noise at 10 dB SNR. For each suppressor: the noise's level change, the
VAD's voiced runs on the noise-only clips (Silero >= 250 and >= 60 ms, and webrtcvad mode 2 >= 250 ms as "w250"), and on the speech its recall against the clean
speech and the correlation of the 10 ms log-energy envelopes of the output and the clean speech.

Candidates are measured only when installed: `livekit` (WebRTC APM: AEC3, NS),
`pyaec` (speexdsp's echo canceller, via aec-rs), `webrtc-noise-gain` (WebRTC NS levels 1-4),
`speexdsp-ns`; `voxgate` is `server.audio_processing` itself.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from loadtests import corpus
from server.audio import PcmFrame, resample

RATE_HZ = 16_000
BLOCK_SAMPLES = RATE_HZ // 100  # 10 ms
VAD_FRAME_SAMPLES = 512
DELAYS_MS = (30, 80, 150, 250)
LEVELS_DB = (-6, -12, -20)
FAR_DBFS = -18.0
NEAR_DBFS = -24.0
NOISE_DBFS = -45.0
RT60_S = 0.3
CONVERGENCE_S = 1.0
FLITE_VOICES = ("slt", "kal", "awb", "rms")

Signal = npt.NDArray[np.float64]
Block = npt.NDArray[np.int16]
BlockProcessor = Callable[[Block, Block], Block]  # (near 10 ms, far 10 ms) -> cleaned 10 ms


# --- signals -------------------------------------------------------------------------------


def _rms(x: Signal) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) if len(x) else 0.0


def _scale_to_dbfs(x: Signal, dbfs: float) -> Signal:
    active = x[np.abs(x) > 0.01 * np.max(np.abs(x))]
    return x * (32768.0 * 10 ** (dbfs / 20) / max(_rms(active), 1e-9))


def pink_noise(n: int, rng: np.random.Generator) -> Signal:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
    noise = np.fft.irfft(spectrum, n)
    return noise / _rms(noise)


def room_response(rng: np.random.Generator, rt60_s: float = RT60_S) -> Signal:
    """A unit direct path followed by exponentially decaying noise (-60 dB after rt60_s)."""
    n = int(rt60_s * RATE_HZ)
    t = np.arange(n) / RATE_HZ
    tail = rng.standard_normal(n) * 10 ** (-3 * t / rt60_s) * 0.3
    tail[0] = 1.0
    return tail


def _convolve(x: Signal, h: Signal) -> Signal:
    n = len(x) + len(h) - 1
    size = 1 << (n - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[: len(x)]


def _voice(name: str, samples: npt.NDArray[np.int16]) -> Signal:
    return resample(PcmFrame(samples, corpus.SAMPLE_RATE_HZ), RATE_HZ).samples.astype(np.float64)


def far_speech(seconds: float, rng: np.random.Generator) -> Signal:
    """flite sentences in turn by four voices, 300-700 ms apart, `seconds` long."""
    parts: list[Signal] = []
    total = 0
    index = 0
    while total < seconds * RATE_HZ:
        text = corpus.SYNTHETIC_SENTENCES[index % len(corpus.SYNTHETIC_SENTENCES)]
        voice = FLITE_VOICES[index % len(FLITE_VOICES)]
        path = corpus.DEFAULT_CACHE_DIR / f"far-{voice}-{corpus._slug(text, voice)}.wav"
        if not path.exists():
            corpus.synthesize_with_flite(text, path, voice=voice)
        samples, rate = corpus.read_wav(path)
        speech = resample(PcmFrame(samples, rate), RATE_HZ).samples.astype(np.float64)
        parts += [speech, np.zeros(int(rng.uniform(0.3, 0.7) * RATE_HZ))]
        total += len(speech) + len(parts[-1])
        index += 1
    far = np.concatenate(parts)[: int(seconds * RATE_HZ)]
    return _scale_to_dbfs(far, FAR_DBFS)


def near_speech(n: int) -> tuple[Signal, slice]:
    """A caller's human utterances (pocketsphinx-testdata) placed from 3 s on, at NEAR_DBFS;
    and the span they cover."""
    clips = [u for u in corpus.load_human() if u.name.startswith("sense")][:2]
    speech = np.concatenate([_voice(u.name, u.samples) for u in clips])
    start = 3 * RATE_HZ
    speech = speech[: n - start]
    near = np.zeros(n)
    near[start : start + len(speech)] = speech
    return _scale_to_dbfs(near, NEAR_DBFS), slice(start, start + len(speech))


def _int16(x: Signal) -> Block:
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


# --- running a candidate ---------------------------------------------------------------------


def run_blocks(processor: BlockProcessor, near: Signal, far: Signal) -> tuple[Signal, float]:
    """The processed signal and the CPU seconds it took."""
    near16, far16 = _int16(near), _int16(far)
    out = np.zeros(len(near16), dtype=np.int16)
    start = time.process_time()
    for i in range(0, len(near16) - BLOCK_SAMPLES + 1, BLOCK_SAMPLES):
        out[i : i + BLOCK_SAMPLES] = processor(near16[i : i + BLOCK_SAMPLES], far16[i : i + BLOCK_SAMPLES])
    return out.astype(np.float64), time.process_time() - start


class Vad:
    """Silero VAD over 32 ms frames; voiced runs counted by their length."""

    def __init__(self) -> None:
        from server.vad import silero

        self._vad = silero.load()

    @staticmethod
    def webrtc_runs(x: Signal, min_ms: int) -> int:
        """Voiced runs by webrtcvad (mode 2, 30 ms frames): far touchier than Silero on noise."""
        import webrtcvad

        vad: Any = webrtcvad.Vad(2)
        x16 = _int16(x)
        frame = 480
        flags = np.array(
            [
                vad.is_speech(x16[i : i + frame].tobytes(), RATE_HZ)
                for i in range(0, len(x16) - frame + 1, frame)
            ],
            dtype=np.bool_,
        )
        return sum(1 for s, e in corpus._runs(flags) if (e - s) * 30 >= min_ms)

    def voiced(self, x: Signal) -> npt.NDArray[np.bool_]:
        classifier = self._vad.open(0.5)
        x16 = _int16(x)
        frames = len(x16) // VAD_FRAME_SAMPLES
        return np.array(
            [
                classifier.speech_probability(
                    PcmFrame(x16[i * VAD_FRAME_SAMPLES : (i + 1) * VAD_FRAME_SAMPLES], RATE_HZ)
                )
                >= 0.5
                for i in range(frames)
            ],
            dtype=np.bool_,
        )

    def runs(self, x: Signal, min_ms: int) -> int:
        flags = self.voiced(x)
        frame_ms = VAD_FRAME_SAMPLES * 1000 / RATE_HZ
        return sum(1 for s, e in corpus._runs(flags) if (e - s) * frame_ms >= min_ms)


# --- candidates --------------------------------------------------------------------------------


def _livekit(**features: bool) -> BlockProcessor:
    from livekit import rtc

    apm: Any = rtc.AudioProcessingModule(**features)

    def process(near: Block, far: Block) -> Block:
        reverse = rtc.AudioFrame(far.tobytes(), RATE_HZ, 1, len(far))
        apm.process_reverse_stream(reverse)
        frame = rtc.AudioFrame(near.tobytes(), RATE_HZ, 1, len(near))
        apm.process_stream(frame)
        return np.frombuffer(frame.data, dtype=np.int16).copy()

    return process


def _speex_aec(filter_ms: int) -> BlockProcessor:
    from pyaec import Aec

    aec: Any = Aec(BLOCK_SAMPLES, filter_ms * RATE_HZ // 1000, RATE_HZ, False)

    def process(near: Block, far: Block) -> Block:
        return np.array(aec.cancel_echo(near.tolist(), far.tolist()), dtype=np.int16)

    return process


def _webrtc_noise_gain(level: int) -> BlockProcessor:
    from webrtc_noise_gain import AudioProcessor

    processor: Any = AudioProcessor(0, level)

    def process(near: Block, far: Block) -> Block:
        return np.frombuffer(processor.Process10ms(near.tobytes()).audio, dtype=np.int16).copy()

    return process


def _speexdsp_ns() -> BlockProcessor:
    from speexdsp_ns import NoiseSuppression

    ns: Any = NoiseSuppression.create(BLOCK_SAMPLES, RATE_HZ)

    def process(near: Block, far: Block) -> Block:
        return np.frombuffer(ns.process(near.tobytes()), dtype=np.int16).copy()

    return process


def _voxgate(echo_cancellation: bool, noise_reduction: Any) -> BlockProcessor:
    from server.audio_processing import ProcessingOptions, open_input_processor

    processor = open_input_processor(ProcessingOptions(echo_cancellation, noise_reduction), RATE_HZ)

    def process(near: Block, far: Block) -> Block:
        return processor.process(PcmFrame(near, RATE_HZ), PcmFrame(far, RATE_HZ)).samples

    return process


def _off() -> BlockProcessor:
    return lambda near, far: near


ECHO_CANDIDATES: dict[str, Callable[[], BlockProcessor]] = {
    "off": _off,
    "livekit-aec3": lambda: _livekit(echo_cancellation=True, high_pass_filter=True),
    "speex-aec-512ms": lambda: _speex_aec(512),
    "voxgate": lambda: _voxgate(True, None),
}
NOISE_CANDIDATES: dict[str, Callable[[], BlockProcessor]] = {
    "off": _off,
    "livekit-ns": lambda: _livekit(noise_suppression=True, high_pass_filter=True),
    **{f"webrtc-ns-{level}": functools.partial(_webrtc_noise_gain, level) for level in (1, 2, 3, 4)},
    "speexdsp-ns": _speexdsp_ns,
    "voxgate-near": lambda: _voxgate(False, "near_field"),
    "voxgate-far": lambda: _voxgate(False, "far_field"),
}


def available(candidates: dict[str, Callable[[], BlockProcessor]]) -> Iterator[tuple[str, BlockProcessor]]:
    for name, factory in candidates.items():
        try:
            yield name, factory()
        except Exception as exc:  # a candidate that is not installed or fails to load: say so, go on
            print(f"# {name}: unavailable ({type(exc).__name__}: {exc})")


# --- echo ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EchoRow:
    candidate: str
    delay_ms: int
    level_db: int
    erle_db: float
    runs_250: int
    runs_60: int
    near_snr_db: float
    near_recall: float
    cpu_per_s: float


def _erle_db(mic: Signal, out: Signal, echo: Signal, noise: Signal) -> float:
    skip = int(CONVERGENCE_S * RATE_HZ)
    blocks = (len(mic) - skip) // BLOCK_SAMPLES

    def power(x: Signal) -> Signal:
        return np.asarray(
            np.mean(np.square(x[skip : skip + blocks * BLOCK_SAMPLES].reshape(blocks, -1)), axis=1),
            dtype=np.float64,
        )

    loud = power(echo) > 10 * power(noise)
    return float(10 * np.log10(np.sum(power(mic)[loud]) / max(np.sum(power(out)[loud]), 1e-9)))


def measure_echo(seconds: float, vad: Vad) -> list[EchoRow]:
    rng = np.random.default_rng(7)
    far = far_speech(seconds, rng)
    n = len(far)
    room = room_response(rng)
    noise = pink_noise(n, rng) * 32768 * 10 ** (NOISE_DBFS / 20)
    near, near_span = near_speech(n)
    clean_voiced = vad.voiced(near + noise)
    vad_span = slice(near_span.start // VAD_FRAME_SAMPLES, near_span.stop // VAD_FRAME_SAMPLES)
    rows: list[EchoRow] = []
    for delay_ms in DELAYS_MS:
        for level_db in LEVELS_DB:
            reverberant = _convolve(far, room)
            reverberant *= _rms(far) / _rms(reverberant) * 10 ** (level_db / 20)
            delay = delay_ms * RATE_HZ // 1000
            echo = np.concatenate([np.zeros(delay), reverberant[: n - delay]])
            mic = echo + noise
            for name, processor in available(ECHO_CANDIDATES):
                out, cpu_s = run_blocks(processor, mic, far)
                _, talk_processor = next(available({name: ECHO_CANDIDATES[name]}))
                talk_out, _ = run_blocks(talk_processor, mic + near, far)
                # The reference is the same candidate's output for the caller alone (no echo,
                # silent far end): its filters delay and phase-shift speech (WebRTC's APM by
                # ~9 ms, high-pass inverted), which must not count as damage.
                _, alone_processor = next(available({name: ECHO_CANDIDATES[name]}))
                alone_out, _ = run_blocks(alone_processor, near + noise, np.zeros(n))
                residual = talk_out[near_span] - alone_out[near_span]
                out_voiced = vad.voiced(talk_out)
                wanted = clean_voiced[vad_span]
                recall = int(np.sum(out_voiced[vad_span] & wanted)) / max(int(np.sum(wanted)), 1)
                rows.append(
                    EchoRow(
                        candidate=name,
                        delay_ms=delay_ms,
                        level_db=level_db,
                        erle_db=_erle_db(mic, out, echo, noise),
                        runs_250=vad.runs(out, 250),
                        runs_60=vad.runs(out, 60),
                        near_snr_db=10 * np.log10(np.sum(alone_out[near_span] ** 2) / np.sum(residual**2)),
                        near_recall=recall,
                        cpu_per_s=cpu_s / (n / RATE_HZ),
                    )
                )
    return rows


def print_echo(rows: Sequence[EchoRow]) -> None:
    print(
        f"{'candidate':<16} {'delay_ms':>8} {'level_dB':>8} {'ERLE_dB':>8} {'runs>=250':>9} "
        f"{'runs>=60':>8} {'nearSNR':>8} {'recall':>7} {'cpu_ms/s':>8}"
    )
    for r in rows:
        print(
            f"{r.candidate:<16} {r.delay_ms:>8} {r.level_db:>8} {r.erle_db:>8.1f} {r.runs_250:>9} "
            f"{r.runs_60:>8} {r.near_snr_db:>8.1f} {r.near_recall:>7.2f} {1000 * r.cpu_per_s:>8.2f}"
        )


# --- noise ---------------------------------------------------------------------------------------


def noises(seconds: float, rng: np.random.Generator) -> dict[str, Signal]:
    n = int(seconds * RATE_HZ)

    def level(x: Signal, dbfs: float) -> Signal:
        return x / max(_rms(x), 1e-9) * 32768 * 10 ** (dbfs / 20)

    cough = np.zeros(n)
    for start_s in np.arange(0.5, seconds - 0.5, 1.3):
        length = int(0.25 * RATE_HZ)
        burst = np.fft.rfft(rng.standard_normal(length))
        freqs = np.fft.rfftfreq(length, 1 / RATE_HZ)
        burst[(freqs < 300) | (freqs > 3000)] = 0
        envelope = np.exp(-np.arange(length) / (0.06 * RATE_HZ)) * (1 - np.exp(-np.arange(length) / 80))
        begin = int(start_s * RATE_HZ)
        cough[begin : begin + length] = np.fft.irfft(burst, length) * envelope
    clicks = np.zeros(n)
    for start in rng.integers(0, n - 200, int(seconds * 6)):
        clicks[start : start + 80] += rng.standard_normal(80) * np.exp(-np.arange(80) / 15)
    notes_hz = 220 * 2 ** (rng.integers(0, 12, int(seconds * 4)) / 12)
    f0 = np.repeat(notes_hz, n // len(notes_hz) + 1)[:n]
    phase = 2 * np.pi * np.cumsum(f0) / RATE_HZ
    music = sum(np.sin(k * phase) / k for k in range(1, 6))
    return {
        "white": level(rng.standard_normal(n), -40),
        "pink": level(pink_noise(n, rng), -35),
        "cough": level(cough, -30),  # -30 dBFS on average, bursts far louder
        "keyboard": level(clicks, -35),
        "music": level(np.asarray(music), -30),
    }


def _envelope_correlation(out: Signal, clean: Signal) -> float:
    """Correlation of the 10 ms log-energy envelopes: blind to the filters' delay and phase."""
    blocks = min(len(out), len(clean)) // BLOCK_SAMPLES

    def envelope(x: Signal) -> Signal:
        power = np.mean(np.square(x[: blocks * BLOCK_SAMPLES].reshape(blocks, -1)), axis=1)
        return np.asarray(np.log10(power + 1.0), dtype=np.float64)

    return float(np.corrcoef(envelope(out), envelope(clean))[0, 1])


def measure_noise(seconds: float, vad: Vad) -> None:
    rng = np.random.default_rng(11)
    clips = noises(seconds, rng)
    speech = np.concatenate([_voice(u.name, u.samples) for u in corpus.load_human()[:6]])
    speech = _scale_to_dbfs(speech, -24)
    speech_noise = pink_noise(len(speech), rng) * _rms(speech) * 10 ** (-10 / 20)
    clean_voiced = vad.voiced(speech)
    header = " ".join(f"{name + ' dB/r250/r60/w250':>26}" for name in clips)
    print(f"{'suppressor':<14} {header} {'sp recall':>9} {'sp corr':>7} {'cpu_ms/s':>8}")
    for name, _ in available(NOISE_CANDIDATES):
        cells = []
        cpu_s = 0.0
        for clip in clips.values():
            _, processor = next(available({name: NOISE_CANDIDATES[name]}))
            out, cpu = run_blocks(processor, clip, np.zeros(len(clip)))
            cpu_s += cpu
            skip = RATE_HZ  # the first second, while the estimators settle
            change_db = 10 * np.log10(_rms(out[skip:]) ** 2 / _rms(clip[skip:]) ** 2)
            cells.append(
                f"{change_db:>+8.1f}/{vad.runs(out, 250):>3}/{vad.runs(out, 60):>3}/{vad.webrtc_runs(out, 250):>3}"
            )
        _, processor = next(available({name: NOISE_CANDIDATES[name]}))
        out, _ = run_blocks(processor, speech + speech_noise, np.zeros(len(speech)))
        voiced = vad.voiced(out)
        recall = int(np.sum(voiced & clean_voiced)) / max(int(np.sum(clean_voiced)), 1)
        corr = _envelope_correlation(out, speech)
        per_s = cpu_s / (len(clips) * seconds)
        print(
            f"{name:<14} "
            + " ".join(f"{c:>26}" for c in cells)
            + f" {recall:>9.2f} {corr:>7.3f} {1000 * per_s:>8.2f}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=("echo", "noise", "both"), default="both")
    parser.add_argument("--seconds", type=float, default=10.0, help="far-end / noise clip length")
    parser.add_argument("--only", nargs="*", help="echo candidates to run (default: all installed)")
    args = parser.parse_args(argv)
    if args.only:
        for name in list(ECHO_CANDIDATES):
            if name not in args.only:
                del ECHO_CANDIDATES[name]
    vad = Vad()
    if args.part in ("echo", "both"):
        print_echo(measure_echo(args.seconds, vad))
    if args.part in ("noise", "both"):
        measure_noise(args.seconds, vad)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
