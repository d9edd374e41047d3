"""Measure speech-to-text backends: word error rate and finalisation latency at real time.

    python -m loadtests.measure_asr                     # pocketsphinx, whisper tiny.en, whisper base
    python -m loadtests.measure_asr --backend whisper:model=tiny.en,min_window_s=30 --runs 5
    python -m loadtests.measure_asr --silence-ms 0 --sessions 2 --json asr.json

A backend is `name[:option=value,...]`: a name of `server.model.registry.ASR_BACKENDS` and the
options its `load()` takes. Each backend runs in a fresh child process, so memory figures do not
mix. The child, in this order:

1. loads the backend through the registry and records the time and the RSS (VmRSS, plus the
   RSS of child processes, where pocketsphinx keeps its decoders);
2. streams every human recording of Debian's pocketsphinx-testdata (goforward, cards, the
   LibriVox sentences; 16 kHz) `--runs` times: 20 ms frames paced at real time, then
   `--silence-ms` of digital silence, also at real time (the end-of-turn silence a server waits
   for before it ends the turn), then `end_input()`. Figures per utterance:
   - final wait: `end_input()` -> the final transcript (what the turn pays after the silence);
   - speech end -> final: from the end of speech in the clip (`loadtests.corpus.speech_span_ms`)
     to the final, i.e. the clip's own trailing silence + `--silence-ms` + the final wait;
   - partial transcripts received before the final, and the event loop's worst lateness
     (a 5 ms ticker), which shows whether decoding ever blocks the loop;
3. word error rate of the finals of the first run, pooled per source: "strict" is
   `loadtests.wer` (digits kept, so Whisper's "10" against "ten" is an error), "lenient" first
   spells out numbers and "Mr."/"Mrs." in the hypothesis, as the references write them;
4. for backends with a blocking `transcribe(frame)` (whisper), each whole clip decoded at once:
   the wall and the process CPU time of one decode (what a final costs when nothing overlaps).

With `--sessions N`, N streams of the same clip run at once (latency figures then show the
sharing of the cores). The machine's load average is printed with the figures: on a shared
2-core box other processes change the timings a lot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from loadtests.corpus import (
    HUMAN_DATA_DIR,
    parse_transcription,
    read_raw_s16le,
    read_wav,
    speech_span_ms,
)
from loadtests.wer import WordErrors, word_errors
from server.audio import PcmFrame
from server.model.registry import ASR_BACKENDS, resolve

RATE_HZ = 16_000
FRAME_SAMPLES = RATE_HZ // 50  # 20 ms
DEFAULT_BACKENDS = ("pocketsphinx", "whisper:model=tiny.en", "whisper:model=base")
Samples = npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class Clip:
    name: str
    source: str  # "librivox", "cards" or "goforward"
    samples: Samples
    reference: str
    speech_end_ms: int


def human_clips(data_dir: Path = HUMAN_DATA_DIR) -> list[Clip]:
    """The 11 recordings of pocketsphinx-testdata at their own 16 kHz, with transcripts."""
    if not data_dir.is_dir():
        raise SystemExit(f"{data_dir} is missing: install Debian's pocketsphinx-testdata")
    raw = [("goforward", "goforward", read_raw_s16le(data_dir / "goforward.raw"), "go forward ten meters")]
    for source, listing in (("cards", "cards/cards.transcription"), ("librivox", "librivox/transcription")):
        references = parse_transcription((data_dir / listing).read_text(encoding="utf-8"))
        for fileid, reference in sorted(references.items()):
            samples, rate = read_wav(data_dir / source / f"{fileid}.wav")
            if rate != RATE_HZ:
                raise SystemExit(f"{fileid}: expected {RATE_HZ} Hz, got {rate} Hz")
            raw.append((f"{source}-{fileid}", source, samples, reference))
    clips = []
    for name, source, samples, reference in raw:
        span = speech_span_ms(samples, RATE_HZ)
        end_ms = span[1] if span is not None else len(samples) * 1000 // RATE_HZ
        clips.append(Clip(name, source, samples, reference, end_ms))
    return clips


# --- lenient normalisation -------------------------------------------------------------------

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    " fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_TITLES = {"mr": "mister", "mrs": "missus", "dr": "doctor"}


def spell_number(value: int) -> str:
    """English words for 0-999 (larger numbers stay digits)."""
    if value < 20:
        return _ONES[value]
    if value < 100:
        return _TENS[value // 10] + ("" if value % 10 == 0 else " " + _ONES[value % 10])
    if value < 1000:
        rest = "" if value % 100 == 0 else " " + spell_number(value % 100)
        return _ONES[value // 100] + " hundred" + rest
    return str(value)


def lenient(text: str) -> str:
    """Numbers spelled out, titles written out, hyphens as spaces."""
    text = re.sub(r"\d+", lambda m: f" {spell_number(int(m.group()))} ", text.replace("-", " "))
    return re.sub(r"\b(mrs?|dr)\b\.?", lambda m: _TITLES[m.group(1).lower()], text, flags=re.IGNORECASE)


# --- the child: one backend --------------------------------------------------------------------


@dataclass(slots=True)
class UtteranceResult:
    clip: str
    source: str
    run: int
    text: str
    final_wait_ms: float
    speech_end_to_final_ms: float
    partials: int
    max_loop_lag_ms: float
    decodes: int | None = None
    final_reused: bool | None = None


@dataclass(slots=True)
class BackendReport:
    backend: str
    load_s: float
    rss_after_load_mb: float
    rss_after_runs_mb: float = 0.0
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)
    utterances: list[UtteranceResult] = field(default_factory=list)
    # Backends with a blocking `transcribe(frame)` (whisper): one whole clip decoded with
    # nothing else running in the process; wall and process CPU time (all threads), per run.
    offline_wall_ms: list[float] = field(default_factory=list)
    offline_cpu_ms: list[float] = field(default_factory=list)


def parse_backend(spec: str) -> tuple[str, dict[str, object]]:
    name, _, rest = spec.partition(":")
    options: dict[str, object] = {}
    for item in filter(None, rest.split(",")):
        key, _, text = item.partition("=")
        value: object = text
        for convert in (int, float):
            try:
                value = convert(text)
                break
            except ValueError:
                continue
        if text in ("true", "false"):
            value = text == "true"
        options[key.strip()] = value
    return name, options


def rss_mb(pid: int | None = None) -> float:
    """VmRSS of a process in MiB (0 if it is gone)."""
    try:
        status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    except OSError:
        return 0.0
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else 0.0


def rss_with_children_mb() -> float:
    pid = os.getpid()
    children = Path(f"/proc/{pid}/task/{pid}/children")
    child_pids = [int(p) for p in children.read_text().split()] if children.exists() else []
    return rss_mb() + sum(rss_mb(child) for child in child_pids)


async def stream_clip(asr: Any, clip: Clip, silence_ms: int, run: int) -> UtteranceResult:
    """Push `clip` and then `silence_ms` of silence at real time; time the final."""
    stream = asr.open_stream()
    partials = 0
    final: str | None = None
    final_at = 0.0
    lag_ms = 0.0
    done = asyncio.Event()

    async def read() -> None:
        nonlocal partials, final, final_at
        async for transcript in stream:
            if transcript.is_final:
                final, final_at = transcript.text, time.perf_counter()
                break
            partials += 1
        done.set()

    async def tick() -> None:
        nonlocal lag_ms
        while not done.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            lag_ms = max(lag_ms, (time.perf_counter() - before - 0.005) * 1000)

    audio = np.concatenate([clip.samples, np.zeros(silence_ms * RATE_HZ // 1000, dtype=np.int16)])
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(read(), name="asr-reader")
            group.create_task(tick(), name="loop-lag")
            start = time.perf_counter()
            for index, offset in enumerate(range(0, len(audio), FRAME_SAMPLES)):
                await asyncio.sleep(max(0.0, start + index * 0.02 - time.perf_counter()))
                stream.push_audio(PcmFrame(audio[offset : offset + FRAME_SAMPLES], RATE_HZ))
            await asyncio.sleep(max(0.0, start + len(audio) / RATE_HZ - time.perf_counter()))
            ended = time.perf_counter()
            stream.end_input()
    finally:
        await stream.aclose()
    if final is None:
        raise RuntimeError(f"{clip.name}: no final transcript")
    speech_end = start + clip.speech_end_ms / 1000
    stats = getattr(stream, "stats", None)
    return UtteranceResult(
        clip=clip.name,
        source=clip.source,
        run=run,
        text=final,
        final_wait_ms=(final_at - ended) * 1000,
        speech_end_to_final_ms=(final_at - speech_end) * 1000,
        partials=partials,
        max_loop_lag_ms=lag_ms,
        decodes=getattr(stats, "decodes", None),
        final_reused=getattr(stats, "final_reused", None),
    )


async def measure_backend(spec: str, runs: int, silence_ms: int, sessions: int) -> BackendReport:
    name, options = parse_backend(spec)
    clips = human_clips()
    started = time.perf_counter()
    asr = resolve(ASR_BACKENDS, name, "asr")(options)
    report = BackendReport(spec, time.perf_counter() - started, rss_with_children_mb())
    try:
        for run in range(runs):
            for clip in clips:
                results = await asyncio.gather(
                    *(stream_clip(asr, clip, silence_ms, run) for _ in range(sessions))
                )
                report.utterances.extend(results)
        report.rss_after_runs_mb = rss_with_children_mb()
        transcribe: Any = getattr(asr, "transcribe", None)
        for _ in range(runs if transcribe is not None else 0):
            for clip in clips:
                wall, cpu = time.perf_counter(), time.process_time()
                transcribe(PcmFrame(clip.samples, RATE_HZ))
                report.offline_wall_ms.append((time.perf_counter() - wall) * 1000)
                report.offline_cpu_ms.append((time.process_time() - cpu) * 1000)
    finally:
        close = getattr(asr, "close", None)
        if close is not None:
            close()
    report.load_average = os.getloadavg()
    return report


# --- the parent: run children, print tables ----------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def wer_table(report: dict[str, Any]) -> dict[str, tuple[WordErrors, WordErrors]]:
    """Per source (and "all"): (strict, lenient) pooled word errors of run 0, first session."""
    seen: set[str] = set()
    pooled: dict[str, tuple[WordErrors, WordErrors]] = {}
    references = {clip.name: clip.reference for clip in human_clips()}
    for utterance in report["utterances"]:
        if utterance["run"] != 0 or utterance["clip"] in seen:
            continue
        seen.add(utterance["clip"])
        reference = references[utterance["clip"]]
        strict = word_errors(reference, utterance["text"])
        loose = word_errors(reference, lenient(utterance["text"]))
        for key in (utterance["source"], "all"):
            old = pooled.get(key, (WordErrors(), WordErrors()))
            pooled[key] = (old[0] + strict, old[1] + loose)
    return pooled


def print_report(reports: list[dict[str, Any]], silence_ms: int) -> None:
    print(f"\nSilence pushed after each clip before end_input(): {silence_ms} ms")
    print(
        "\n| backend | load s | RSS after load MB | RSS after runs MB | WER strict all / librivox / cards"
        " / goforward | WER lenient all / librivox / cards / goforward |"
    )
    print("|---|---|---|---|---|---|")
    for report in reports:
        table = wer_table(report)

        def cell(index: int, table: dict[str, tuple[WordErrors, WordErrors]] = table) -> str:
            keys = ("all", "librivox", "cards", "goforward")
            return " / ".join(f"{100 * table[key][index].rate:.1f} %" for key in keys if key in table)

        print(
            f"| {report['backend']} | {report['load_s']:.2f} | {report['rss_after_load_mb']:.0f}"
            f" | {report['rss_after_runs_mb']:.0f} | {cell(0)} | {cell(1)} |"
        )
    print(
        "\n| backend | utterances | final wait p50 / p95 / max ms | speech end -> final p50 / p95 ms"
        " | partials per utt. | decodes per utt. | finals reused | loop lag max ms"
        " | whole-clip decode wall p50 / CPU p50 ms | load avg |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for report in reports:
        rows = report["utterances"]
        waits = [u["final_wait_ms"] for u in rows]
        ends = [u["speech_end_to_final_ms"] for u in rows]
        decodes = [u["decodes"] for u in rows if u["decodes"] is not None]
        reused = [u["final_reused"] for u in rows if u["final_reused"] is not None]
        offline = "-"
        if report["offline_wall_ms"]:
            wall, cpu = report["offline_wall_ms"], report["offline_cpu_ms"]
            offline = f"{percentile(wall, 50):.0f} / {percentile(cpu, 50):.0f}"
        cells = [
            report["backend"],
            str(len(rows)),
            f"{percentile(waits, 50):.0f} / {percentile(waits, 95):.0f} / {max(waits):.0f}",
            f"{percentile(ends, 50):.0f} / {percentile(ends, 95):.0f}",
            f"{statistics.mean(u['partials'] for u in rows):.1f}",
            f"{statistics.mean(decodes):.1f}" if decodes else "-",
            f"{sum(reused)}/{len(reused)}" if reused else "-",
            f"{max(u['max_loop_lag_ms'] for u in rows):.0f}",
            offline,
            " ".join(f"{x:.1f}" for x in report["load_average"]),
        ]
        print("| " + " | ".join(cells) + " |")
    print("\nFinal transcripts (run 0):")
    for report in reports:
        print(f"  {report['backend']}")
        seen: set[str] = set()
        for utterance in report["utterances"]:
            if utterance["run"] == 0 and utterance["clip"] not in seen:
                seen.add(utterance["clip"])
                print(f"    {utterance['clip']:<45} {utterance['text']}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--backend", action="append", help="name[:option=value,...] (repeatable)")
    parser.add_argument("--runs", type=int, default=3, help="passes over the clips (default 3)")
    parser.add_argument("--silence-ms", type=int, default=300, help="silence pushed before end_input")
    parser.add_argument("--sessions", type=int, default=1, help="concurrent streams per clip")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        report = asyncio.run(measure_backend(args.child, args.runs, args.silence_ms, args.sessions))
        print(json.dumps(asdict(report)))
        return 0
    reports = []
    for spec in args.backend or DEFAULT_BACKENDS:
        print(f"measuring {spec} ...", file=sys.stderr, flush=True)
        command = [
            sys.executable,
            "-m",
            "loadtests.measure_asr",
            "--child",
            spec,
            "--runs",
            str(args.runs),
            "--silence-ms",
            str(args.silence_ms),
            "--sessions",
            str(args.sessions),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"{spec} failed:\n{done.stderr}", file=sys.stderr)
            continue
        reports.append(json.loads(done.stdout.strip().splitlines()[-1]))
    if args.json:
        args.json.write_text(json.dumps(reports, indent=1))
    print(f"machine: {os.cpu_count()} CPUs, load average now {os.getloadavg()}")
    print_report(reports, args.silence_ms)
    return 0 if reports else 1


if __name__ == "__main__":
    raise SystemExit(main())
