"""Why pocketsphinx fails on espeak-ng voices, and what a knowledge-biased second decode buys
(BENCHMARKS.md, "Operator knowledge", "pocketsphinx on espeak-ng voices").

    python -m loadtests.knowledge_asr_bias pipeline   # the input pipeline's suspects, WER
    python -m loadtests.knowledge_asr_bias bias       # a second decode with a biased LM

Both decode in this process with the shipped backend's decoder settings (the model in the
`pocketsphinx` wheel via `decoder_settings`, one pass) and feed audio as the backend does: one decoder
kept across utterances (its cepstral mean carries over), 200 ms of digital silence either
side, 200 ms batches. The audio is `loadtests.knowledge_eval`'s cached speech (six voices, the
50 questions of `loadtests.knowledge_set`).

`pipeline`: word error rate of the shipped settings against changes to the input and the
front end, on espeak-ng en-us and flite slt (the other voices follow the same pattern), and on
the 11 human recordings of pocketsphinx-testdata, so that a change that helps synthetic
speech is seen to hurt (or not) real speech.

`bias`: a second decoder, fed the same audio, whose language model is a bigram model of the
knowledge file's questions and answers, its unigrams interpolated with the 5000 most likely
words of the general en-us model (so speech outside the knowledge can still come out as
general words). Its transcript is used for retrieval only. Reported per policy, on the same
utterances: in-knowledge spoken right / WRONG, out-of-knowledge answered anyway, for espeak-ng
and flite voices apart, plus the 11 human recordings (none asks about the shop) and the CPU
time of each decoder per utterance and of its final `end_utt`.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from loadtests.knowledge_eval import VOICES, build_index, expected_line, speak
from loadtests.knowledge_set import IN_KNOWLEDGE, KNOWLEDGE_FILE, OUT_OF_KNOWLEDGE
from loadtests.wer import WordErrors, word_errors
from server.knowledge.knowledge import load_knowledge_file
from server.knowledge.retrieval import (
    AnswerPlan,
    GroundModel,
    MatchThresholds,
    Scored,
    SpeakAnswer,
    choose_answer,
)
from server.model.backends.pocketsphinx_asr import decoder_settings

Samples = npt.NDArray[np.int16]
RATE_HZ = 16_000
PAD_MS = 200
BATCH_MS = 200
GENERAL_WORDS = 5000  # general words in the biased model
GENERAL_SHARE = 0.5  # their share of the unigram mass
QUESTIONS = [q.question for q in IN_KNOWLEDGE] + list(OUT_OF_KNOWLEDGE)


def decoder(lm: str | None = None, front_end: dict[str, object] | None = None) -> Any:
    """A decoder with the backend's settings. `front_end`: feature settings applied after the
    model's feat.params (which override the same keys given to the constructor)."""
    import pocketsphinx

    config = decoder_settings()
    if lm is not None:
        config["lm"] = lm
    made = pocketsphinx.Decoder(**config)
    if front_end:
        changed = made.config
        for key, value in front_end.items():
            changed[key] = value
        made.reinit_feat(changed)
    return made


@dataclass(frozen=True, slots=True)
class Decoded:
    text: str
    cpu_s: float  # the whole utterance
    end_cpu_s: float  # end_utt alone: what the turn waits for after the last audio


def decode(dec: Any, samples: Samples) -> Decoded:
    silence = np.zeros(RATE_HZ * PAD_MS // 1000, dtype=np.int16)
    audio = np.concatenate([silence, samples, silence])
    step = RATE_HZ * BATCH_MS // 1000
    started = time.process_time()
    dec.start_utt()
    for offset in range(0, len(audio), step):
        dec.process_raw(audio[offset : offset + step].tobytes(), False, False)
    ending = time.process_time()
    dec.end_utt()
    ended = time.process_time()
    hypothesis = dec.hyp()
    return Decoded(hypothesis.hypstr if hypothesis is not None else "", ended - started, ended - ending)


# --- pipeline ------------------------------------------------------------------------------

Transform = Callable[[Samples], Samples]


def _noise(sigma: float) -> Transform:
    rng = np.random.default_rng(0)

    def add(samples: Samples) -> Samples:
        noisy = samples.astype(np.float64) + rng.normal(0.0, sigma, len(samples))
        return np.clip(noisy, -32768, 32767).astype(np.int16)

    return add


def _gain(factor: float) -> Transform:
    return lambda samples: np.clip(samples * factor, -32768, 32767).astype(np.int16)


def _telephone(samples: Samples) -> Samples:
    """8 kHz mu-law and back, as a Twilio call reaches the recogniser."""
    import audioop  # deprecated, still in 3.11; only this measurement uses it

    import soxr

    low = soxr.resample(samples.astype(np.float32), RATE_HZ, 8000).clip(-32768, 32767).astype(np.int16)
    coded = np.frombuffer(audioop.ulaw2lin(audioop.lin2ulaw(low.tobytes(), 2), 2), dtype=np.int16)
    back: Samples = (
        soxr.resample(coded.astype(np.float32), 8000, RATE_HZ).clip(-32768, 32767).astype(np.int16)
    )
    return back


def _wer(dec: Any, pairs: Sequence[tuple[str, Samples]], transform: Transform) -> float:
    errors = WordErrors()
    for reference, samples in pairs:
        errors = errors + word_errors(reference, decode(dec, transform(samples)).text)
    return errors.rate


def run_pipeline() -> None:
    from loadtests.measure_asr import human_clips

    synthetic = {
        f"{program}:{voice}": [(q, speak(program, voice, q)) for q in QUESTIONS]
        for program, voice in (VOICES[0], VOICES[3])
    }
    human = [(clip.reference, clip.samples) for clip in human_clips()]
    variants: list[tuple[str, dict[str, object] | None, Transform]] = [
        ("shipped settings", None, lambda s: s),
        ("gain x0.3", None, _gain(0.3)),
        ("white noise sigma 10 (-50 dB)", None, _noise(10)),
        ("white noise sigma 30 (-40 dB)", None, _noise(30)),
        ("white noise sigma 100 (-30 dB)", None, _noise(100)),
        ("remove_noise off", {"remove_noise": False}, lambda s: s),
        ("dither on", {"dither": True}, lambda s: s),
        ("telephone band (8 kHz mu-law)", None, _telephone),
    ]
    print(f"{'':34s} " + " ".join(f"{label:>22s}" for label in synthetic) + f" {'human (11)':>12s}")
    for name, front_end, transform in variants:
        rates = [_wer(decoder(front_end=front_end), pairs, transform) for pairs in synthetic.values()]
        human_rate = _wer(decoder(front_end=front_end), human, transform)
        print(f"{name:34s} " + " ".join(f"{r:22.1%}" for r in rates) + f" {human_rate:12.1%}", flush=True)
    # the whole utterance at once: batch CMN over the utterance instead of the live mean
    dec = decoder()
    errors = WordErrors()
    for reference, samples in synthetic["espeak-ng:en-us"]:
        dec.start_utt()
        dec.process_raw(samples.tobytes(), False, True)
        dec.end_utt()
        hypothesis = dec.hyp()
        errors = errors + word_errors(reference, hypothesis.hypstr if hypothesis else "")
    print(f"{'whole utterance (batch CMN)':34s} {errors.rate:22.1%} (espeak-ng en-us)")


# --- bias ----------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def general_unigrams(count: int) -> dict[str, float]:
    """The `count` most likely words of the general model (over the dictionary), normalised."""
    from pocketsphinx import NGramModel

    files = decoder_settings()
    general = NGramModel.readfile(str(files["lm"]))
    with open(str(files["dict"])) as lines:
        words = {line.split()[0] for line in lines if line.strip() and "(" not in line.split()[0]}
    best = sorted(((general.prob([w]), w) for w in words), reverse=True)[:count]
    weights = {w: 1.0001**logp for logp, w in best}  # pocketsphinx's log base
    total = sum(weights.values())
    return {w: p / total for w, p in weights.items()}


def biased_arpa(
    sentences: Sequence[tuple[str, int]],
    general: dict[str, float],
    general_share: float,
    known: Callable[[str], bool],
    discount: float = 0.5,
    add: float = 0.1,
) -> str:
    """A bigram ARPA model of `sentences` (text, weight) with absolute discounting, backing off
    to unigrams interpolated with `general` (share `general_share`)."""
    unigrams: Counter[str] = Counter()
    bigrams: Counter[tuple[str, str]] = Counter()
    contexts: Counter[str] = Counter()
    for sentence, weight in sentences:
        tokens = ["<s>", *(w for w in _words(sentence) if known(w)), "</s>"]
        for word in tokens[1:]:
            unigrams[word] += weight
        for before, word in zip(tokens, tokens[1:], strict=False):
            bigrams[before, word] += weight
            contexts[before] += weight
    domain_total = sum(unigrams.values())
    domain = {w: (c + add) / (domain_total + add * len(unigrams)) for w, c in unigrams.items()}
    vocabulary = sorted(set(unigrams) | set(general))
    mixed = {
        w: (1 - general_share) * domain.get(w, 0.0) + general_share * general.get(w, 0.0) for w in vocabulary
    }
    norm = sum(mixed.values())
    unigram_p = {w: p / norm for w, p in mixed.items()}
    followers: dict[str, list[tuple[str, int]]] = {}
    for (before, word), c in bigrams.items():
        followers.setdefault(before, []).append((word, c))
    bigram_p: dict[tuple[str, str], float] = {}
    backoff: dict[str, float] = {}
    for before, seen in followers.items():
        left = discount * len(seen) / contexts[before]
        seen_mass = seen_unigram = 0.0
        for word, c in seen:
            p = (c - discount) / contexts[before] + left * unigram_p[word]
            bigram_p[before, word] = p
            seen_mass += p
            seen_unigram += unigram_p[word]
        backoff[before] = (1 - seen_mass) / (1 - seen_unigram)
    out = ["\\data\\", f"ngram 1={len(vocabulary) + 1}", f"ngram 2={len(bigram_p)}", "", "\\1-grams:"]
    out.append(f"-99 <s> {math.log10(backoff['<s>']):.4f}")
    for word in vocabulary:
        bow = f" {math.log10(backoff[word]):.4f}" if word in backoff else ""
        out.append(f"{math.log10(unigram_p[word]):.4f} {word}{bow}")
    out += ["", "\\2-grams:"]
    out += [f"{math.log10(p):.4f} {a} {b}" for (a, b), p in sorted(bigram_p.items())]
    return "\n".join([*out, "", "\\end\\", ""])


def knowledge_sentences() -> list[tuple[str, int]]:
    """The knowledge file's example questions (weight 3) and answer sentences (weight 1)."""
    knowledge = load_knowledge_file(KNOWLEDGE_FILE)
    out: list[tuple[str, int]] = []
    for entry in knowledge.entries:
        out += [(q, 3) for q in entry.questions]
        out += [(s, 1) for s in re.split(r"[.;]", entry.answer or "") if s.strip()]
    return out


Policy = Callable[[Sequence[Scored], Sequence[Scored]], AnswerPlan]


def policies(th: MatchThresholds) -> dict[str, Policy]:
    def fallback(stricter: float | None, agree: int | None = None) -> Policy:
        domain_th = (
            th if stricter is None else replace(th, answer_score=th.answer_score + stricter, hedge_score=None)
        )

        def decide(general: Sequence[Scored], biased: Sequence[Scored]) -> AnswerPlan:
            plan = choose_answer(general, th)
            if isinstance(plan, SpeakAnswer):
                return plan
            second = choose_answer(biased, domain_th)
            if isinstance(second, SpeakAnswer) and (
                agree is None or any(s.item is second.entry for s in general[:agree])
            ):
                return second
            return plan

        return decide

    return {
        "general transcript (shipped)": lambda g, b: choose_answer(g, th),
        "biased transcript alone": lambda g, b: choose_answer(b, th),
        "biased when general speaks nothing": fallback(None),
        "... and biased entry in general top-3": fallback(None, agree=3),
        "... biased unhedged >= answer+0.05": fallback(0.05),
        "... biased unhedged >= answer+0.10": fallback(0.10),
    }


def run_bias() -> None:
    from loadtests.measure_asr import human_clips

    arpa = Path(".cache/voxgate/knowledge_eval/knowledge_biased.arpa")
    arpa.parent.mkdir(parents=True, exist_ok=True)
    general_dec = decoder()
    known: Callable[[str], bool] = lambda w: w == "</s>" or general_dec.lookup_word(w) is not None  # noqa: E731
    started = time.process_time()
    arpa.write_text(biased_arpa(knowledge_sentences(), general_unigrams(GENERAL_WORDS), GENERAL_SHARE, known))
    biased_dec = decoder(lm=str(arpa))
    print(f"biased model built and loaded: {time.process_time() - started:.2f} s CPU")
    rows: list[tuple[str, str, Decoded, Decoded]] = []  # question, voice, general, biased
    for program, voice in VOICES:
        for question in QUESTIONS:
            samples = speak(program, voice, question)
            rows.append(
                (question, f"{program}:{voice}", decode(general_dec, samples), decode(biased_dec, samples))
            )
    human = []
    for clip in human_clips():
        human.append((clip.reference, decode(general_dec, clip.samples), decode(biased_dec, clip.samples)))
    for label, pick in (("general", 0), ("biased", 1)):
        per_voice: dict[str, WordErrors] = {}
        for row in rows:
            heard = (row[2], row[3])[pick].text
            per_voice[row[1]] = per_voice.get(row[1], WordErrors()) + word_errors(row[0], heard)
        human_errors = WordErrors()
        for reference, general, biased in human:
            human_errors = human_errors + word_errors(reference, (general, biased)[pick].text)
        print(
            f"WER {label:8s} "
            + " ".join(f"{v.split(':')[1]} {e.rate:5.1%}" for v, e in per_voice.items())
            + f" human {human_errors.rate:5.1%}"
        )
    for label, pick in (("general", 0), ("biased", 1)):
        cpu = sorted((row[2], row[3])[pick].cpu_s * 1000 for row in rows)
        end = sorted((row[2], row[3])[pick].end_cpu_s * 1000 for row in rows)
        print(
            f"CPU {label:8s} per utterance median {cpu[len(cpu) // 2]:.0f} ms p90 {cpu[int(0.9 * len(cpu))]:.0f} ms;"
            f" end_utt median {end[len(end) // 2]:.1f} ms p90 {end[int(0.9 * len(end))]:.1f} ms"
        )
    index = build_index("hybrid")
    for name, policy in policies(index.thresholds).items():
        counts: dict[str, Counter[str]] = {}
        for question, voice, general, biased in rows:
            plan = policy(index.search(general.text), index.search(biased.text))
            want = expected_line(question)
            group = ("espeak-ng" if voice.startswith("espeak") else "flite") + (
                " in" if want is not None else " out"
            )
            tally = counts.setdefault(group, Counter())
            tally["n"] += 1
            if isinstance(plan, SpeakAnswer):
                tally["right" if plan.entry.line == want else "wrong"] += 1
            elif isinstance(plan, GroundModel):
                tally["grounded"] += 1
        human_spoken = sum(
            isinstance(policy(index.search(g.text), index.search(b.text)), SpeakAnswer) for _, g, b in human
        )
        line = f"{name:40s}"
        for group in ("espeak-ng in", "flite in", "espeak-ng out", "flite out"):
            t = counts[group]
            if group.endswith(" in"):
                line += f" | {group}: right {t['right']}/{t['n']} WRONG {t['wrong']}"
            else:
                line += f" | {group}: answered {t['wrong']}/{t['n']}"
        print(line + f" | human answered {human_spoken}/{len(human)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.knowledge_asr_bias")
    parser.add_argument("stage", choices=("pipeline", "bias"))
    args = parser.parse_args(argv)
    if args.stage == "pipeline":
        run_pipeline()
    else:
        run_bias()
    return 0


if __name__ == "__main__":
    sys.exit(main())
