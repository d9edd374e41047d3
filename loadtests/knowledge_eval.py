"""Measure operator knowledge on recognised speech (BENCHMARKS.md, "Operator knowledge").

    python -m loadtests.knowledge_eval transcribe [--recognisers pocketsphinx,whisper]
    python -m loadtests.knowledge_eval retrieval           # embedding vs BM25, threshold sweep
    python -m loadtests.knowledge_eval answers [--json out.json]   # Gemma 3 270M end to end
    python -m loadtests.knowledge_eval latency [--rounds 3]        # knowledge vs model answers
    python -m loadtests.knowledge_eval human                       # recorded human speech
    python -m loadtests.knowledge_eval roles                       # role confusion only

`transcribe`: every question of `loadtests.knowledge_set` (in and out of the knowledge) is
spoken by six voices (espeak-ng en-us, en-gb-x-rp and en-us+f3; flite slt, kal16 and awb),
and the audio is transcribed by our recognisers from the registry (pocketsphinx; whisper
tiny.en), fed whole, not paced. Audio and transcripts are cached under
.cache/voxgate/knowledge_eval, so the later stages rerun in seconds.

`retrieval`: for each retriever (sentence embedding, BM25) and each transcript: whether the
best entry is the right one (top-1), and what `choose_answer` does with the default
thresholds: speaks the right answer, speaks a WRONG answer (the costly error), grounds the
model with the right entry among the hints, or asks the model alone. Out-of-knowledge
questions: how often an answer is spoken anyway.

`answers`: the shipped pipeline's text path, with the real Gemma 3 270M (worker process):
grounding (knowledge + guard) on every transcript; in-knowledge: the reply holds the fact;
out-of-knowledge: invented specifics (specifics the guard does not find in the knowledge or
the conversation) with the guard and, for comparison, of the model alone (no knowledge, no
guard); role confusion on the 50 caller lines (typed, as a recogniser writes them), judged by
`speaks_as_customer` and printed for reading.

`latency`: paired rounds over the in-knowledge questions through a CascadeSession (Gemma,
espeak-ng): the caller's line -> the reply's first audio, answered from the knowledge and,
right after, by the grounded model (hints only, never the direct answer).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from loadtests.corpus import read_wav
from loadtests.knowledge_set import IN_KNOWLEDGE, KNOWLEDGE_FILE, OUT_OF_KNOWLEDGE, ROLE_LINES
from server.audio import PcmFrame
from server.knowledge.embedding import MiniLmEncoder
from server.knowledge.grounding import Grounding
from server.knowledge.knowledge import load_knowledge_file
from server.knowledge.retrieval import (
    GroundModel,
    KnowledgeIndex,
    MatchThresholds,
    Retriever,
    SpeakAnswer,
    choose_answer,
)
from server.knowledge.role import speaks_as_caller
from server.knowledge.specifics import SpecificsGuard
from server.model.base import Message, SessionOptions
from server.model.registry import ASR_BACKENDS, LLM_BACKENDS, resolve

CACHE_DIR = Path(".cache/voxgate/knowledge_eval")
RATE_HZ = 16_000
VOICES = (
    ("espeak-ng", "en-us"),
    ("espeak-ng", "en-gb-x-rp"),
    ("espeak-ng", "en-us+f3"),
    ("flite", "slt"),
    ("flite", "kal16"),
    ("flite", "awb"),
)
RECOGNISERS = {"pocketsphinx": ("pocketsphinx", None), "whisper": ("whisper", {"model": "tiny.en"})}


# --- transcripts --------------------------------------------------------------------------


def speak(program: str, voice: str, text: str) -> np.ndarray:
    """`text` spoken by the voice, 16 kHz int16 (cached WAV)."""
    digest = hashlib.sha1(f"{program}|{voice}|{text}".encode()).hexdigest()[:16]
    path = CACHE_DIR / "audio" / f"{digest}.wav"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out.wav"
            if program == "espeak-ng":
                argv = ["espeak-ng", "-v", voice, "-w", str(out), text]
            else:
                argv = ["flite", "-voice", voice, "-t", text, "-o", str(out)]
            subprocess.run(argv, check=True, capture_output=True, timeout=60)
            out.replace(path)
    samples, rate = read_wav(path)
    if rate != RATE_HZ:
        samples = (
            soxr.resample(samples.astype(np.float32), rate, RATE_HZ).clip(-32768, 32767).astype(np.int16)
        )
    return samples


async def transcribe(asr: Any, samples: np.ndarray) -> str:
    stream = asr.open_stream()
    try:
        silence = np.zeros(RATE_HZ // 5, dtype=np.int16)
        audio = np.concatenate([silence, samples, silence])
        for offset in range(0, len(audio), RATE_HZ // 50):
            stream.push_audio(PcmFrame(audio[offset : offset + RATE_HZ // 50], RATE_HZ))
            await asyncio.sleep(0)
        stream.end_input()
        async for transcript in stream:
            if transcript.is_final:
                return str(transcript.text).strip()
    finally:
        await stream.aclose()
    return ""


def transcripts_path() -> Path:
    return CACHE_DIR / "transcripts.json"


def load_transcripts() -> list[dict[str, str]]:
    path = transcripts_path()
    if not path.exists():
        sys.exit(f"no transcripts yet ({path}); run: python -m loadtests.knowledge_eval transcribe")
    rows: list[dict[str, str]] = json.loads(path.read_text())
    return rows


async def run_transcribe(recognisers: Sequence[str]) -> None:
    path = transcripts_path()
    rows: list[dict[str, str]] = json.loads(path.read_text()) if path.exists() else []
    done = {(r["question"], r["voice"], r["recogniser"]) for r in rows}
    questions = [q.question for q in IN_KNOWLEDGE] + list(OUT_OF_KNOWLEDGE)
    for recogniser in recognisers:
        name, options = RECOGNISERS[recogniser]
        asr = resolve(ASR_BACKENDS, name, "speech-to-text")(options)
        for program, voice in VOICES:
            label = f"{program}:{voice}"
            for question in questions:
                if (question, label, recogniser) in done:
                    continue
                text = await transcribe(asr, speak(program, voice, question))
                rows.append(
                    {"question": question, "voice": label, "recogniser": recogniser, "transcript": text}
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(rows, indent=1))
            print(f"{recogniser} {label}: done", file=sys.stderr)
        close = getattr(asr, "close", None)
        if callable(close):
            close()
    wer_report(rows)


def wer_report(rows: list[dict[str, str]]) -> None:
    from loadtests.wer import WordErrors, word_errors

    pooled: dict[tuple[str, str], WordErrors] = {}
    for row in rows:
        key = (row["recogniser"], row["voice"])
        pooled[key] = pooled.get(key, WordErrors()) + word_errors(row["question"], row["transcript"])
    for (recogniser, voice), errors in sorted(pooled.items()):
        print(f"WER {recogniser:13s} {voice:22s} {errors.rate:6.1%}")


# --- retrieval ----------------------------------------------------------------------------


def build_index(retriever: Retriever, thresholds: MatchThresholds | None = None) -> KnowledgeIndex:
    knowledge = load_knowledge_file(KNOWLEDGE_FILE)
    encoder = MiniLmEncoder.load() if retriever != "bm25" else None
    return KnowledgeIndex(knowledge, encoder, retriever, thresholds)


def expected_line(question: str) -> int | None:
    for item in IN_KNOWLEDGE:
        if item.question == question:
            return item.entry_line
    return None


def run_retrieval() -> None:
    rows = load_transcripts()
    clean = [
        {"question": q, "voice": "text", "recogniser": "none", "transcript": q}
        for q in [i.question for i in IN_KNOWLEDGE] + list(OUT_OF_KNOWLEDGE)
    ]
    for retriever in ("hybrid", "embedding", "bm25"):
        index = build_index(retriever)
        print(f"\n== {retriever}")
        for label, subset in (("clean text", clean), *_by_recogniser(rows)):
            ranked = [(row, index.search(row["transcript"])) for row in subset]
            inside = [(r, s) for r, s in ranked if expected_line(r["question"]) is not None]
            if label != "clean text":
                flite = [(r, s) for r, s in inside if r["voice"].startswith("flite")]
                top1_flite = sum(
                    1 for r, s in flite if s and _line(s[0].item) == expected_line(r["question"])
                )
                print(f"{label:14s} flite voices only: top-1 {top1_flite / max(len(flite), 1):6.1%}")
            outside = [(r, s) for r, s in ranked if expected_line(r["question"]) is None]
            top1 = sum(1 for r, s in inside if s and _line(s[0].item) == expected_line(r["question"]))
            print(f"{label:14s} in-knowledge {len(inside):3d}: top-1 {top1 / len(inside):6.1%}")
            for thresholds in _sweep(retriever):
                counts = _paths(inside, outside, thresholds)
                print(
                    f"   answer>={thresholds.answer_score:<5} margin {thresholds.margin:<5}"
                    f" hedge>={thresholds.hedge_score} sure>={thresholds.sure_score}"
                    f" hint>={thresholds.hint_score:<5}"
                    f" in: spoken right {counts['right'] / len(inside):6.1%} (hedged {counts['hedged'] / len(inside):5.1%})"
                    f" WRONG {counts['wrong'] / len(inside):5.1%}"
                    f" grounded(right in hints) {counts['grounded_right'] / len(inside):5.1%}"
                    f" other {counts['other'] / len(inside):5.1%} |"
                    f" out: spoken {counts['out_spoken'] / len(outside):5.1%}"
                    f" grounded {counts['out_grounded'] / len(outside):5.1%}"
                )
                if label == "clean text":
                    spoken = _caller_lines_spoken(index, thresholds)
                    print(
                        f"      caller lines answered from the knowledge: {len(spoken)}/{len(ROLE_LINES)}: {spoken}"
                    )


def _caller_lines_spoken(index: KnowledgeIndex, thresholds: MatchThresholds) -> list[str]:
    """The role set's caller lines (mostly outside the knowledge) that get a spoken answer."""
    out = []
    for line in ROLE_LINES:
        plan = choose_answer(index.search(line), thresholds)
        if isinstance(plan, SpeakAnswer):
            out.append(f"{line!r} -> {plan.entry.questions[0]!r}{' (hedged)' if plan.hedged else ''}")
    return out


def _line(item: object) -> int:
    return int(getattr(item, "line", -1))


def _by_recogniser(rows: list[dict[str, str]]) -> list[tuple[str, list[dict[str, str]]]]:
    names = sorted({r["recogniser"] for r in rows})
    return [(name, [r for r in rows if r["recogniser"] == name]) for name in names]


def _sweep(retriever: str) -> list[MatchThresholds]:
    if retriever == "bm25":  # BM25's own scale; no hedging, no topic check
        return [
            MatchThresholds(answer_score=a, margin=m, hedge_score=None, hint_score=h, sure_score=0.0)
            for a, m, h in ((4.0, 1.0, 2.0), (6.0, 1.0, 3.0), (8.0, 2.0, 3.0))
        ]
    default = MatchThresholds()
    return [
        default,
        replace(default, answer_score=0.5),
        replace(default, answer_score=0.7),
        replace(default, margin=0.1),
        replace(default, hedge_score=None),
        replace(default, hedge_score=0.5),
        replace(default, sure_score=0.0),  # no topic check
    ]


def _paths(inside: list[Any], outside: list[Any], thresholds: MatchThresholds) -> Counter[str]:
    counts: Counter[str] = Counter()
    for row, ranked in inside:
        plan = choose_answer(ranked, thresholds)
        want = expected_line(row["question"])
        if isinstance(plan, SpeakAnswer):
            counts["right" if plan.entry.line == want else "wrong"] += 1
            counts["hedged"] += plan.hedged
        elif isinstance(plan, GroundModel) and any(_line(s.item) == want for s in plan.items):
            counts["grounded_right"] += 1
        else:
            counts["other"] += 1
    for _row, ranked in outside:
        plan = choose_answer(ranked, thresholds)
        counts[
            "out_spoken"
            if isinstance(plan, SpeakAnswer)
            else "out_grounded"
            if isinstance(plan, GroundModel)
            else "out_model"
        ] += 1
    return counts


# --- answers --------------------------------------------------------------------------------


def speaks_as_customer(reply: str, line: str) -> bool:
    """A reply in the customer's voice: the role check's heuristic (server/knowledge/role.py),
    which the checked replies also pass through, so it is printed with every reply for reading."""
    return any(speaks_as_caller(sentence, line) for sentence in re.split(r"(?<=[.!?])\s+", reply) if sentence)


def invented(reply: str, knowledge_text: str, history: Sequence[str]) -> list[str]:
    guard = SpecificsGuard([knowledge_text, *history])
    return [s.text for s in guard.unsupported(reply)]


async def ask(grounding: Grounding | None, llm: Any, words: str) -> tuple[str, str | None]:
    """One turn: the caller's `words` (no earlier turns) -> (reply, answer path)."""
    history = [Message("user", words)]
    paths: list[str] = []
    options = SessionOptions()
    if grounding is None:
        pieces = [p async for p in llm.complete(history, options) if isinstance(p, str)]
        return "".join(pieces).strip(), None
    stream = grounding.reply(llm.complete, history, options, paths.append)
    pieces = [p async for p in stream if isinstance(p, str)]
    return " ".join("".join(pieces).split()), paths[-1] if paths else None


async def run_answers(json_out: Path | None, recognisers: Sequence[str], *, roles_only: bool = False) -> None:
    rows = [] if roles_only else [r for r in load_transcripts() if r["recogniser"] in recognisers]
    llm = resolve(LLM_BACKENDS, "gemma", "language model")(None)
    index = build_index("hybrid")
    knowledge_text = index.knowledge.text
    grounded = Grounding(index)
    guard_only = Grounding(None)
    report: dict[str, Any] = {"in": [], "out": [], "role": []}
    try:
        facts = {i.question: i.facts for i in IN_KNOWLEDGE}
        for row in rows:
            reply, path = await ask(grounded, llm, row["transcript"])
            if row["question"] in facts:
                has_fact = any(f in reply.lower() for f in facts[row["question"]])
                report["in"].append({**row, "reply": reply, "path": path, "has_fact": has_fact})
            else:
                raw, _ = await ask(None, llm, row["transcript"])
                report["out"].append(
                    {
                        **row,
                        "reply": reply,
                        "path": path,
                        "invented": invented(reply, knowledge_text, [row["transcript"]]),
                        "model_alone": raw,
                        "model_alone_invented": invented(raw, knowledge_text, [row["transcript"]]),
                    }
                )
        for line in ROLE_LINES:
            for label, grounding in (
                ("knowledge", grounded),
                ("guard only", guard_only),
                ("model alone", None),
            ):
                reply, path = await ask(grounding, llm, line)
                report["role"].append(
                    {
                        "line": line,
                        "setup": label,
                        "reply": reply,
                        "path": path,
                        "as_customer": speaks_as_customer(reply, line),
                    }
                )
    finally:
        close = getattr(llm, "close", None)
        if callable(close):
            close()
    summarise(report)
    if json_out is not None:
        await asyncio.to_thread(json_out.write_text, json.dumps(report, indent=1))


def summarise(report: dict[str, Any]) -> None:
    for recogniser in sorted({r["recogniser"] for r in report["in"]}):
        inside = [r for r in report["in"] if r["recogniser"] == recogniser]
        paths = Counter(r["path"] for r in inside)
        ok = sum(r["has_fact"] for r in inside)
        print(
            f"in-knowledge by voice, {recogniser}: fact in reply {ok}/{len(inside)} = {ok / len(inside):.1%}; paths {dict(paths)}"
        )
        for r in inside:
            if not r["has_fact"]:
                print(f"   MISS {r['voice']:20s} heard {r['transcript']!r} -> {r['reply']!r} [{r['path']}]")
        outside = [r for r in report["out"] if r["recogniser"] == recogniser]
        bad = [r for r in outside if r["invented"]]
        raw_bad = [r for r in outside if r["model_alone_invented"]]
        paths = Counter(r["path"] for r in outside)
        print(
            f"out-of-knowledge, {recogniser}: invented specifics {len(bad)}/{len(outside)} = {len(bad) / len(outside):.1%}"
            f" (model alone, no guard: {len(raw_bad)}/{len(outside)} = {len(raw_bad) / len(outside):.1%}); paths {dict(paths)}"
        )
        for r in bad:
            print(f"   INVENTED {r['transcript']!r} -> {r['reply']!r} {r['invented']}")
    for setup in ("knowledge", "guard only", "model alone"):
        rows = [r for r in report["role"] if r["setup"] == setup]
        confused = [r for r in rows if r["as_customer"]]
        print(
            f"role confusion ({setup}): {len(confused)}/{len(rows)} = {len(confused) / max(len(rows), 1):.1%}"
        )
        for r in rows:
            mark = "CUSTOMER" if r["as_customer"] else "        "
            print(f"   {mark} {r['line']!r} -> {r['reply']!r} [{r['path']}]")


# --- latency -------------------------------------------------------------------------------


async def run_latency(rounds: int) -> None:
    from server.model.cascade import CascadeModel
    from server.model.fakes import FakeAsr
    from server.model.registry import TTS_BACKENDS

    llm = resolve(LLM_BACKENDS, "gemma", "language model")(None)
    tts = resolve(TTS_BACKENDS, "espeak", "text-to-speech")(None)
    index = build_index("hybrid")
    never_speak = replace(index.thresholds, answer_score=2.0, hedge_score=None, hint_score=-1.0)
    hinted_index = KnowledgeIndex(index.knowledge, index._encoder, "hybrid", never_speak)
    model = CascadeModel(FakeAsr(), llm, tts)
    results: dict[str, list[float]] = {"knowledge": [], "grounded_model": []}
    paths: Counter[str] = Counter()
    try:
        for _ in range(rounds):
            for item in IN_KNOWLEDGE:
                for label, grounding in (
                    ("knowledge", Grounding(index)),
                    ("grounded_model", Grounding(hinted_index)),
                ):
                    session = await model.open(SessionOptions(voice="en-us", grounding=grounding))
                    await grounding.look_ahead(item.question)  # as while the caller spoke
                    session.add_user_text(item.question)
                    started = time.perf_counter()
                    first_audio = None
                    async for event in session.respond(_response_options()):
                        if first_audio is None and type(event).__name__ == "AudioChunk":
                            first_audio = (time.perf_counter() - started) * 1000
                    paths[f"{label}->{session.timings.answer_path}"] += 1
                    await session.aclose()
                    if first_audio is not None:
                        results[label].append(first_audio)
    finally:
        close = getattr(llm, "close", None)
        if callable(close):
            close()
    print(f"paths: {dict(paths)}")
    lookups = []
    fresh = KnowledgeIndex(index.knowledge, index._encoder, "hybrid")
    known_words = dict(fresh._word_vectors)
    for row in load_transcripts():  # a lookup that the look-ahead did not do first
        fresh._cache.clear()  # nothing cached: the caller's line and words are encoded
        fresh._word_vectors = dict(known_words)
        started = time.perf_counter()
        fresh.search(row["transcript"])
        lookups.append((time.perf_counter() - started) * 1000)
    lookups.sort()
    print(
        f"lookup without look-ahead n={len(lookups)}: median {statistics.median(lookups):.1f} ms"
        f"  p90 {lookups[int(0.9 * (len(lookups) - 1))]:.1f} ms"
    )
    for label, values in results.items():
        values.sort()
        p90 = values[int(0.9 * (len(values) - 1))]
        print(
            f"{label:15s} n={len(values):3d} first audio: median {statistics.median(values):6.1f} ms  p90 {p90:6.1f} ms"
        )


def _response_options() -> Any:
    from server.model.base import ResponseOptions

    return ResponseOptions()


async def run_human(recognisers: Sequence[str]) -> None:
    """Debian's pocketsphinx-testdata recordings (LibriVox sentences, spoken card names, "go
    forward ten meters"): speech that asks nothing of the shop. Transcribed by our recognisers,
    then answered with grounding: how often an answer is spoken from the knowledge anyway, and
    whether a model reply states a specific nobody gave."""
    from loadtests.measure_asr import human_clips

    clips = human_clips()
    llm = resolve(LLM_BACKENDS, "gemma", "language model")(None)
    index = build_index("hybrid")
    grounded = Grounding(index)
    try:
        for recogniser in recognisers:
            name, options = RECOGNISERS[recogniser]
            asr = resolve(ASR_BACKENDS, name, "speech-to-text")(options)
            spoken = invented_count = 0
            for clip in clips:
                heard = await transcribe(asr, clip.samples)
                reply, path = await ask(grounded, llm, heard)
                bad = invented(reply, index.knowledge.text, [heard])
                spoken += path in ("knowledge", "knowledge_hedged")
                invented_count += bool(bad)
                print(
                    f"{recogniser:12s} {heard!r} -> {reply!r} [{path}]{' INVENTED ' + str(bad) if bad else ''}"
                )
            print(
                f"{recogniser}: {len(clips)} recordings; answered from the knowledge {spoken},"
                f" invented specifics {invented_count}"
            )
            close = getattr(asr, "close", None)
            if callable(close):
                close()
    finally:
        close = getattr(llm, "close", None)
        if callable(close):
            close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.knowledge_eval", description=__doc__.split("\n")[0]
    )
    parser.add_argument("stage", choices=("transcribe", "retrieval", "answers", "roles", "latency", "human"))
    parser.add_argument("--recognisers", default="pocketsphinx,whisper")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    recognisers = [r for r in args.recognisers.split(",") if r]
    if args.stage == "transcribe":
        asyncio.run(run_transcribe(recognisers))
    elif args.stage == "retrieval":
        run_retrieval()
    elif args.stage in ("answers", "roles"):
        asyncio.run(run_answers(args.json, recognisers, roles_only=args.stage == "roles"))
    elif args.stage == "human":
        asyncio.run(run_human(recognisers))
    else:
        asyncio.run(run_latency(args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
