"""A PocketSphinx language model that expects a listener's short words.

Over a reply, a listener says "mm-hmm", "uh-huh", "okay", "yeah". The general en-us model
rates them far below common words (log-probabilities: "mhm" -149875 and "hmm" -107004 against
"the" -28000; "mm-hmm" is not in its dictionary at all), so the recogniser makes other words of
them, the more so over the reply's own echo: "bump them" for flite rms's "mm-hmm", "the auto"
for espeak's "uh-huh" at -12 dB (measure_overlaps). This module writes a unigram model whose
vocabulary is the general model's `general_words` most likely words plus the listener's
tokens, the tokens holding `listener_share` of the probability, and a dictionary with the
tokens' hummed pronunciations ("mm-hmm" as M HH M). A second decoder with it hears the same
audio as the turn's recogniser while the caller talks over a reply; its words only say
whether the reply may talk on under the voice (`TurnTaker`, `ListenerWordsHeard`), never what
the caller said (the turn's transcript stays the general decoder's).

Unigrams alone: the question is only whether any word is not a listener's, and a sentence's
first words come out as some general word either way (measured in BENCHMARKS.md, "A listener's
recogniser").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

# the tokens and how a listener says them (ARPAbet, the en-us model's phones); the first is
# the dictionary's own where it has the word
LISTENER_PRONUNCIATIONS: dict[str, tuple[str, ...]] = {
    "okay": ("OW K EY", "K EY"),
    "yeah": ("Y AE", "Y EH", "Y EH AH"),
    "yes": ("Y EH S",),
    "yep": ("Y EH P",),
    "right": ("R AY T",),
    "alright": ("AO L R AY T",),
    "sure": ("SH UH R",),
    "uh-huh": ("AH HH AH", "AH HH AH N", "M HH AH"),
    "mm-hmm": ("M HH M", "M M", "AH M HH AH M", "M HH AH M"),
    "hmm": ("HH M", "M"),
    "aha": ("AA HH AA",),
    "oh": ("OW",),
    "ah": ("AA",),
}


@dataclass(frozen=True, slots=True)
class ListenerModelOptions:
    general_words: int = 5000  # the general model's most likely words kept beside the tokens
    # the tokens' share of the unigram probability: 0.3 named more hums over the echo, and
    # cost one (slt's "mm-hmm" over the echo, cancelled); 0.15 cost none (BENCHMARKS.md)
    listener_share: float = 0.15
    end_share: float = 0.1  # the end of the utterance's (`</s>`)


def write_listener_model(
    general_lm: Path, general_dict: Path, out_dir: Path, options: ListenerModelOptions | None = None
) -> tuple[Path, Path]:
    """Write the listener's model (ARPA) and dictionary into `out_dir` from the general model
    and dictionary; return their paths. About half a second (reading the general model)."""
    from pocketsphinx import NGramModel

    options = options or ListenerModelOptions()
    if not 0 < options.listener_share < 1 or not 0 < options.end_share < 1 or options.general_words < 1:
        raise ValueError(f"invalid listener model options: {options}")
    pronunciations: dict[str, list[str]] = {}
    with general_dict.open() as lines:
        for line in lines:
            fields = line.split()
            if fields:
                pronunciations.setdefault(fields[0].split("(")[0], []).append(" ".join(fields[1:]))
    general = NGramModel.readfile(str(general_lm))
    ranked = sorted(
        ((general.prob([word]), word) for word in pronunciations if word not in LISTENER_PRONUNCIATIONS),
        reverse=True,
    )[: options.general_words]
    weights = {word: 1.0001**log_p for log_p, word in ranked}  # PocketSphinx's log base
    total = sum(weights.values())
    words_share = 1 - options.end_share
    probabilities = {
        word: words_share * (1 - options.listener_share) * w / total for word, w in weights.items()
    }
    for token in LISTENER_PRONUNCIATIONS:
        probabilities[token] = words_share * options.listener_share / len(LISTENER_PRONUNCIATIONS)
    arpa = ["\\data\\", f"ngram 1={len(probabilities) + 2}", "", "\\1-grams:", "-99 <s>"]
    arpa.append(f"{math.log10(options.end_share):.4f} </s>")
    arpa += [f"{math.log10(p):.4f} {word}" for word, p in sorted(probabilities.items())]
    arpa += ["", "\\end\\", ""]
    dictionary = []
    for word in sorted(probabilities):
        phones = LISTENER_PRONUNCIATIONS.get(word) or tuple(pronunciations[word])
        dictionary += [f"{word if i == 0 else f'{word}({i + 1})'} {p}" for i, p in enumerate(phones)]
    out_dir.mkdir(parents=True, exist_ok=True)
    lm_path, dict_path = out_dir / "listener.arpa", out_dir / "listener.dict"
    lm_path.write_text("\n".join(arpa))
    dict_path.write_text("\n".join(dictionary) + "\n")
    return lm_path, dict_path
