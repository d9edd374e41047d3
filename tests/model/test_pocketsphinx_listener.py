"""The listener's model (`pocketsphinx_listener`) and the backend's streams decoded with it: the
real PocketSphinx model, on flite's hums and espeak's sentences."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from loadtests.overlays import spoken
from server.audio import PcmFrame, Samples, resample
from server.errors import BackendError
from server.model.backends.pocketsphinx_asr import PocketsphinxStream, decoder_settings, load
from server.model.backends.pocketsphinx_listener import (
    LISTENER_PRONUNCIATIONS,
    ListenerModelOptions,
    write_listener_model,
)
from server.model.base import HearsListeners
from server.streaming.interruptions import TALK_OVER_WORDS, words_of
from tests.model.test_pocketsphinx_asr import espeak, frames

pytestmark = pytest.mark.slow

RATE = 16_000


@pytest.fixture(scope="module")
def general_files() -> tuple[Path, Path]:
    settings = decoder_settings()
    return Path(str(settings["lm"])), Path(str(settings["dict"]))


def test_the_model_gives_the_listeners_tokens_their_share_and_hummed_pronunciations(
    general_files: tuple[Path, Path], tmp_path: Path
) -> None:
    options = ListenerModelOptions(general_words=300, listener_share=0.4)
    lm, dictionary = write_listener_model(*general_files, tmp_path, options)
    unigrams = {}
    for line in lm.read_text().split("\\1-grams:")[1].split("\\end\\")[0].splitlines():
        if line.strip():
            log_p, word = line.split()[:2]
            unigrams[word] = 10 ** float(log_p)
    assert len(unigrams) == 300 + len(LISTENER_PRONUNCIATIONS) + 2  # and <s>, </s>
    tokens = sum(unigrams[w] for w in LISTENER_PRONUNCIATIONS)
    assert tokens == pytest.approx((1 - options.end_share) * 0.4, rel=1e-3)
    assert math.fsum(p for w, p in unigrams.items() if w != "<s>") == pytest.approx(1.0, rel=1e-3)
    entries = dictionary.read_text().splitlines()
    assert "mm-hmm M HH M" in entries and "mm-hmm(2) M M" in entries
    assert all(word in TALK_OVER_WORDS for word in LISTENER_PRONUNCIATIONS)  # all may talk over


@pytest.mark.parametrize(
    "options",
    [
        ListenerModelOptions(listener_share=0.0),
        ListenerModelOptions(listener_share=1.0),
        ListenerModelOptions(0),
    ],
)
def test_impossible_model_options_are_refused(
    general_files: tuple[Path, Path], tmp_path: Path, options: ListenerModelOptions
) -> None:
    with pytest.raises(ValueError, match="listener model options"):
        write_listener_model(*general_files, tmp_path, options)


def flite(voice: str, text: str, cache_dir: Path) -> Samples:
    samples, rate = spoken("flite", voice, text, cache_dir)
    clip = resample(PcmFrame(samples, rate), RATE).samples
    pad = np.zeros(RATE * 3 // 10, dtype=np.int16)
    return np.concatenate([pad, clip, pad])


async def final_words(stream: PocketsphinxStream, samples: Samples) -> list[str]:
    try:
        for frame in frames(samples):
            stream.push_audio(frame)
        stream.end_input()
        return words_of([t async for t in stream][-1].text)
    finally:
        await stream.aclose()


@pytest.fixture(scope="module")
def sentence() -> Samples:
    return espeak("I want a refund for my order.")


# flite's hums that the general model makes words of (measure_overlaps: "bump them", "the hut",
# "ahead"); the listener's model must name them
HUMS = [("rms", "um hum"), ("kal16", "uh huh"), ("slt", "uh huh")]


@pytest.mark.parametrize(("voice", "text"), HUMS)
async def test_the_listeners_stream_names_a_hum_the_general_model_makes_words_of(
    voice: str, text: str, tmp_path: Path
) -> None:
    hum = flite(voice, text, tmp_path)
    backend = load({"max_decoders": 1})
    try:
        assert isinstance(backend, HearsListeners)
        general = await final_words(backend.open_stream(), hum)
        listener = await final_words(backend.open_listener_stream(), hum)
    finally:
        backend.close()
    assert not set(general) <= TALK_OVER_WORDS, general
    assert listener and set(listener) <= TALK_OVER_WORDS, listener


async def test_the_listeners_stream_hears_a_sentence_as_more_than_a_listeners_words(
    sentence: Samples,
) -> None:
    """What keeps a real interruption from being talked over: the caller's first words come
    out as general words, not tokens."""
    backend = load({"max_decoders": 1})
    try:
        words = await final_words(backend.open_listener_stream(), sentence)
    finally:
        backend.close()
    assert not set(words) <= TALK_OVER_WORDS, words


async def test_warm_up_starts_a_listeners_decoder_too_and_an_option_turns_it_off() -> None:
    backend = load({"max_decoders": 1})
    try:
        backend.warm_up()
        assert (backend.decoder_count, backend.listener_decoder_count) == (1, 1)
    finally:
        backend.close()
    plain = load({"max_decoders": 1, "listener_model": False})
    try:
        plain.warm_up()
        assert (plain.decoder_count, plain.listener_decoder_count) == (1, 0)
        with pytest.raises(BackendError, match="listener_model"):
            plain.open_listener_stream()
    finally:
        plain.close()
    with pytest.raises(BackendError, match="listener_model must be a boolean"):
        load({"listener_model": "yes"})
