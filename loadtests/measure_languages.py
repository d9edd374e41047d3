"""Whisper base on languages other than English: word error rate and decode time per clip.

    python -m loadtests.measure_languages                 # es fr de it pt, and en as control
    python -m loadtests.measure_languages --languages es,de --json languages.json
    python -m loadtests.measure_languages --wpm 130        # espeak-ng speaking slower

The clips are synthetic: espeak-ng (the system `espeak-ng` binary) speaks four short sentences
per language with its voice for that language, resampled to 16 kHz. Each clip is decoded whole,
once per mode, with the shipped Whisper base (`server.model.backends.whisper_asr`, no download):

- `language`: the session's `transcription.language` set to the clip's language;
- `default`: no language given (Voxgate's default: English, no language detection);
- `translate`: Whisper's translate task (English out), scored against an English reference.

Word error rate is pooled per language and mode; accents are stripped from both sides before
`loadtests.wer` normalises them (an accent error is not counted). Decode time is the wall time
of one whole-clip decode (what a final costs when nothing overlaps), median over the clips.
espeak-ng speech is clean and robotic: these figures say whether a language works, not how a
human caller on a phone line will be transcribed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtests.corpus import read_wav
from loadtests.wer import WordErrors, word_errors
from server.audio import PcmFrame, resample
from server.model.backends import whisper_asr
from server.model.backends.whisper_engine import DecodeOptions

# (spoken sentence, English translation)
SENTENCES: dict[str, list[tuple[str, str]]] = {
    "en": [
        ("I would like to book a table for two people tonight.", ""),
        ("My flight to Berlin was cancelled this morning.", ""),
        ("Please send the invoice to my office address.", ""),
        ("The weather will be sunny and warm tomorrow.", ""),
    ],
    "es": [
        (
            "Quisiera reservar una mesa para dos personas esta noche.",
            "I would like to book a table for two people tonight.",
        ),
        ("Mi vuelo a Berlín fue cancelado esta mañana.", "My flight to Berlin was cancelled this morning."),
        (
            "Por favor envíe la factura a la dirección de mi oficina.",
            "Please send the invoice to my office address.",
        ),
        ("Mañana el tiempo será soleado y cálido.", "Tomorrow the weather will be sunny and warm."),
    ],
    "fr": [
        (
            "Je voudrais réserver une table pour deux personnes ce soir.",
            "I would like to book a table for two people tonight.",
        ),
        ("Mon vol pour Berlin a été annulé ce matin.", "My flight to Berlin was cancelled this morning."),
        (
            "Veuillez envoyer la facture à l'adresse de mon bureau.",
            "Please send the invoice to my office address.",
        ),
        ("Demain il fera beau et chaud.", "Tomorrow it will be nice and warm."),
    ],
    "de": [
        (
            "Ich möchte heute Abend einen Tisch für zwei Personen reservieren.",
            "I would like to book a table for two people tonight.",
        ),
        (
            "Mein Flug nach Berlin wurde heute Morgen gestrichen.",
            "My flight to Berlin was cancelled this morning.",
        ),
        (
            "Bitte schicken Sie die Rechnung an meine Büroadresse.",
            "Please send the invoice to my office address.",
        ),
        ("Morgen wird das Wetter sonnig und warm.", "Tomorrow the weather will be sunny and warm."),
    ],
    "it": [
        (
            "Vorrei prenotare un tavolo per due persone stasera.",
            "I would like to book a table for two people tonight.",
        ),
        (
            "Il mio volo per Berlino è stato cancellato stamattina.",
            "My flight to Berlin was cancelled this morning.",
        ),
        (
            "Per favore mandi la fattura all'indirizzo del mio ufficio.",
            "Please send the invoice to my office address.",
        ),
        ("Domani il tempo sarà soleggiato e caldo.", "Tomorrow the weather will be sunny and warm."),
    ],
    "pt": [
        (
            "Gostaria de reservar uma mesa para duas pessoas esta noite.",
            "I would like to book a table for two people tonight.",
        ),
        (
            "O meu voo para Berlim foi cancelado esta manhã.",
            "My flight to Berlin was cancelled this morning.",
        ),
        (
            "Por favor envie a fatura para o endereço do meu escritório.",
            "Please send the invoice to my office address.",
        ),
        ("Amanhã o tempo vai estar ensolarado e quente.", "Tomorrow the weather will be sunny and warm."),
    ],
}
MODES = ("language", "default", "translate")


def strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def speak(text: str, language: str, directory: Path, wpm: int) -> PcmFrame:
    """`text` spoken by espeak-ng's voice for `language` at `wpm` words a minute, at 16 kHz."""
    path = directory / "clip.wav"
    subprocess.run(["espeak-ng", "-v", language, "-s", str(wpm), "-w", str(path), text], check=True)
    samples, rate = read_wav(path)
    return resample(PcmFrame(samples, rate), 16_000)


def measure(languages: Sequence[str], wpm: int) -> dict[str, Any]:
    started = time.perf_counter()
    asr = whisper_asr.load({"model": "base", "cpu_threads": 2})
    load_s = time.perf_counter() - started
    engine = asr._engine
    results: dict[str, Any] = {"load_s": round(load_s, 2), "wpm": wpm, "languages": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for language in languages:
            pooled = {mode: WordErrors() for mode in MODES}
            times: dict[str, list[float]] = {mode: [] for mode in MODES}
            samples: list[dict[str, str]] = []
            for sentence, english in SENTENCES[language]:
                frame = speak(sentence, language, Path(tmp), wpm)
                for mode in MODES:
                    if language == "en" and mode != "language":
                        continue
                    options = DecodeOptions(
                        language=language if mode != "default" else None,
                        task="translate" if mode == "translate" else "transcribe",
                    )
                    prompt = engine.prompt_tokens(options)
                    t0 = time.perf_counter()
                    text = engine.transcribe(frame.samples, frame.sample_count, prompt)
                    times[mode].append(time.perf_counter() - t0)
                    reference = english if mode == "translate" else sentence
                    pooled[mode] += word_errors(strip_accents(reference), strip_accents(text))
                    samples.append({"mode": mode, "reference": reference, "hypothesis": text})
            results["languages"][language] = {
                mode: {
                    "wer": round(pooled[mode].rate, 3),
                    "words": pooled[mode].reference_words,
                    "decode_ms_p50": round(statistics.median(times[mode]) * 1000),
                }
                for mode in MODES
                if times[mode]
            } | {"samples": samples}
    asr.close()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--languages", default="en,es,fr,de,it,pt")
    parser.add_argument("--wpm", type=int, default=175, help="espeak-ng speed (its default: 175)")
    parser.add_argument("--json", type=Path, help="also write the full results (with transcripts) here")
    args = parser.parse_args(argv)
    languages = [code for code in args.languages.split(",") if code]
    unknown = [code for code in languages if code not in SENTENCES]
    if unknown:
        parser.error(f"no sentences for {', '.join(unknown)}; known: {', '.join(SENTENCES)}")
    results = measure(languages, args.wpm)
    print(
        f"whisper base loaded in {results['load_s']} s; espeak-ng at {args.wpm} wpm;"
        f" load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{'lang':5} {'mode':10} {'WER':>6} {'words':>6} {'decode p50':>11}")
    for language, modes in results["languages"].items():
        for mode in MODES:
            if mode in modes:
                row = modes[mode]
                print(
                    f"{language:5} {mode:10} {row['wer']:6.1%} {row['words']:6} {row['decode_ms_p50']:>8} ms"
                )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
