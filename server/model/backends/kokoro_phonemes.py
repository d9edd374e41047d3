"""English text -> Kokoro token ids: text splitting, espeak-ng IPA, the IPA -> Kokoro mapping.

Order of calls:

    phonemizer = Phonemizer(shared_espeak(), load_vocab(...))   # once per backend
    chunks = phonemizer.token_chunks(text)   # blocking (libespeak-ng): run it off the loop

How text becomes tokens: `text_segments` cuts the text into (words, punctuation mark) pairs,
libespeak-ng (voice en-us) turns the words into IPA, `espeak_to_kokoro` maps that IPA to
Kokoro's phoneme symbols (the mapping misaki, Kokoro's own G2P, applies to espeak output),
`split_phonemes` cuts the result at sentence ends (and, for sentences over Kokoro's 510-token
limit, at clause punctuation, then between words), and the shipped vocabulary gives the ids.
Symbols outside the vocabulary are dropped.

Invariant: every libespeak-ng call holds `_Espeak.lock`, which is `espeak_library.LOCK`, shared
with the espeak TTS backend: the library keeps its state in globals. `shared_espeak()` starts
the library once per process with the same arguments as espeak_tts.py.
"""

from __future__ import annotations

import ctypes
import re
import threading
from collections.abc import Mapping

from server.errors import BackendError, BackendUnavailable
from server.model.backends import espeak_library

MAX_TOKENS = 510  # Kokoro's context is 512 ids: the phonemes plus a pad id at each end
ESPEAK_VOICE = "en-us"

# espeak-ng's en-us IPA -> the symbols Kokoro v1.0 was trained on (misaki's phoneme set),
# applied longest first. The table follows misaki's `EspeakFallback` (misaki/espeak.py, by
# hexgrad, Apache-2.0), which is how Kokoro's own pipeline turns espeak output into Kokoro
# phonemes; "^" is the tie espeak writes inside multi-letter phonemes (we ask for it).
_ESPEAK_TO_KOKORO = sorted(
    {
        "ʔˌn\u0329": "tn", "ʔn\u0329": "tn", "ʔn": "tn", "ʔ": "t",
        "a^ɪ": "I", "a^ʊ": "W", "e^ɪ": "A", "e": "A", "ɔ^ɪ": "Y", "o^ʊ": "O",
        "d^ʒ": "ʤ", "t^ʃ": "ʧ", "ə^l": "ᵊl",
        "ʲo": "jo", "ʲə": "jə", "ʲ": "",
        "ɚ": "əɹ", "r": "ɹ", "x": "k", "ç": "k", "ɐ": "ə", "ɬ": "l", "\u0303": "",
    }.items(),
    key=lambda pair: -len(pair[0]),
)  # fmt: skip
_SYLLABIC = re.compile("(\\S)\u0329")

# Punctuation Kokoro has tokens for, as espeak would end a clause there; "." after one of
# these words is an abbreviation, not a sentence end.
_PUNCTUATION = re.compile(r"(\.{3}|…|[.!?]+|[,;:])(?=[\s\"'”’)\]]|$)|\s*(?:—|–|--)\s*")
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "prof", "approx"})
_SENTENCE_MARKS = ".!?…"
_CLAUSE_MARKS = ",;:—"


def espeak_to_kokoro(ipa: str) -> str:
    """One espeak-ng IPA string (tied with "^", American English) in Kokoro's symbols."""
    for old, new in _ESPEAK_TO_KOKORO:
        ipa = ipa.replace(old, new)
    ipa = _SYLLABIC.sub(r"ᵊ\1", ipa).replace("\u0329", "")
    ipa = ipa.replace("ɜːɹ", "ɜɹ").replace("ɜː", "ɜɹ").replace("ɪə", "iə").replace("ː", "")
    # "ɚ" before an "ɹ" ("arrive": ɚɹˈaɪv) would otherwise give a doubled "ɹɹ".
    return ipa.replace("o", "ɔ").replace("^", "").replace("ɹɹ", "ɹ")


def text_segments(text: str) -> list[tuple[str, str]]:
    """`text` as (words, punctuation mark) pairs, the mark normalised to one Kokoro symbol
    ("" when the text ends without one)."""
    text = " ".join(text.replace("’", "'").split())
    segments: list[tuple[str, str]] = []
    start = 0
    pending = ""
    for match in _PUNCTUATION.finditer(text):
        words = pending + text[start : match.start()]
        mark = match.group(0).strip()
        last_word = words.rsplit(None, 1)[-1].lower() if words.strip() else ""
        if mark == "." and last_word in _ABBREVIATIONS:
            pending, start = words + ".", match.end()
            continue
        segments.append((words.strip(), _normalise_mark(mark)))
        pending, start = "", match.end()
    rest = (pending + text[start:]).strip()
    if rest:
        segments.append((rest, ""))
    return segments


def _normalise_mark(mark: str) -> str:
    if "?" in mark:
        return "?"
    if "!" in mark:
        return "!"
    if mark in ("...", "…"):
        return "…"
    if mark in ("—", "–", "--"):
        return "—"
    return mark[:1]


def split_phonemes(phonemes: str, limit: int = MAX_TOKENS) -> list[str]:
    """Cut a phoneme string into pieces of at most `limit` symbols: after every sentence
    mark; a longer sentence after clause marks, then between words, then anywhere."""
    pieces = []
    for sentence in _split_after(phonemes, _SENTENCE_MARKS):
        for clause in [sentence] if len(sentence) <= limit else _split_after(sentence, _CLAUSE_MARKS):
            pieces.extend(_pack_words(clause, limit))
    return pieces


def _split_after(text: str, marks: str) -> list[str]:
    parts = re.split(f"(?<=[{re.escape(marks)}])\\s+", text.strip())
    return [part for part in parts if part]


def _pack_words(text: str, limit: int) -> list[str]:
    if len(text) <= limit:
        return [text]
    out: list[str] = []
    current = ""
    for word in text.split(" "):
        while len(word) > limit:  # a "word" longer than the model's context: cut it
            if current:
                out.append(current)
                current = ""
            out.append(word[:limit])
            word = word[limit:]
        if current and len(current) + 1 + len(word) > limit:
            out.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        out.append(current)
    return out


# From espeak-ng's speak_lib.h (API revision 12).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_PHONEMES_IPA = 0x02
_PHONEMES_TIE = 0x80
_EE_OK = 0
_PHONEME_MODE = _PHONEMES_IPA | _PHONEMES_TIE | (ord("^") << 8)


class _Espeak:
    """libespeak-ng from the `espeakng-loader` wheel, used only for `espeak_TextToPhonemes`.
    Every library call holds `lock`, the lock of espeak_library shared with espeak_tts.py."""

    def __init__(self, lib: ctypes.CDLL, data_path: str) -> None:
        self._lib = lib
        self.lock = espeak_library.LOCK  # shared with espeak_tts: the library is global
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        with self.lock:
            # The same arguments as espeak_tts.py, so whichever starts the library first
            # leaves it in the state the other expects.
            if (
                espeak_library.initialize(
                    lib, _AUDIO_OUTPUT_SYNCHRONOUS, 40, data_path, _INITIALIZE_DONT_EXIT
                )
                <= 0
            ):
                raise BackendUnavailable(
                    f"libespeak-ng from espeakng-loader failed to start (data at {data_path})"
                )

    def ipa_clauses(self, text: str, voice: str) -> list[str]:
        """espeak's IPA for `text`, one string per clause (blocking, ≈0.1 ms per word)."""
        buffer = ctypes.c_char_p(text.replace("\0", " ").encode("utf-8"))
        cursor = ctypes.pointer(buffer)
        clauses = []
        with self.lock:
            if not espeak_library.select_voice(self._lib, voice):
                raise BackendError(f"espeak cannot select voice {voice!r}")
            while cursor.contents.value:
                result = self._lib.espeak_TextToPhonemes(cursor, _CHARS_UTF8, _PHONEME_MODE)
                if result:
                    clauses.append(result.decode("utf-8", errors="replace"))
        return clauses


_espeak: _Espeak | None = None
_espeak_guard = threading.Lock()


def shared_espeak() -> _Espeak:
    """The process's libespeak-ng for phonemes, started on first use (espeak_library
    initialises it once and serialises every call with espeak_tts's)."""
    global _espeak
    with _espeak_guard:
        if _espeak is None:
            try:
                import espeakng_loader

                lib = ctypes.CDLL(espeakng_loader.get_library_path())
                data_path = espeakng_loader.get_data_path()
            except (ImportError, OSError, RuntimeError) as exc:
                raise BackendUnavailable(
                    f"Kokoro needs libespeak-ng for phonemes ({exc}); run: pip install espeakng-loader"
                ) from exc
            _espeak = _Espeak(lib, data_path)
        return _espeak


class Phonemizer:
    """English text -> Kokoro token-id chunks, each at most `MAX_TOKENS` long."""

    def __init__(self, espeak: _Espeak, vocab: Mapping[str, int]) -> None:
        self._espeak = espeak
        self._vocab = dict(vocab)

    def phonemes(self, text: str) -> str:
        """Kokoro phoneme symbols for `text`, punctuation kept; symbols outside the
        vocabulary are dropped."""
        out: list[str] = []
        for words, mark in text_segments(text):
            ipa = (
                " ".join(clause.strip() for clause in self._espeak.ipa_clauses(words, ESPEAK_VOICE))
                if words
                else ""
            )
            symbols = "".join(c for c in espeak_to_kokoro(ipa) if c in self._vocab).strip()
            if symbols or (mark and out):
                out.append(f"{symbols}{mark}")
        return " ".join(out)

    def token_ids(self, phonemes: str) -> list[int]:
        """Token ids of Kokoro phoneme symbols (symbols outside the vocabulary dropped)."""
        return [self._vocab[c] for c in phonemes if c in self._vocab]

    def token_chunks(self, text: str) -> list[list[int]]:
        """Token ids of `text`, cut at sentence ends (see `split_phonemes`)."""
        return [self.token_ids(piece) for piece in split_phonemes(self.phonemes(text)) if piece.strip()]
