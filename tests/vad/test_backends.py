from collections.abc import Iterator

import numpy as np
import pytest

from server.audio import AudioFormatError, FrameChunker, PcmFrame, Samples, resample
from server.errors import BackendError
from server.model.backends.espeak_tts import load as load_tts
from server.vad import silero as silero_vad
from server.vad import webrtc as webrtc_vad
from server.vad.detector import ClassifierFactory, FrameClassifier
from server.vad.silero import SileroVad
from server.vad.webrtc import WebrtcVad, aggressiveness_for

RATE = 16_000


@pytest.fixture(scope="module")
def webrtc() -> WebrtcVad:
    return webrtc_vad.load()


@pytest.fixture(scope="module")
def silero() -> SileroVad:
    return silero_vad.load()


@pytest.fixture(scope="module")
def speech() -> Samples:
    """A sentence spoken by espeak, at 16 kHz, trimmed of its leading and trailing silence."""
    tts = load_tts()

    async def synthesize() -> Samples:
        chunks = [
            frame.samples
            async for frame in tts.synthesize(
                "Hello, I would like to check the status of my order please.", ""
            )
        ]
        return np.concatenate(chunks)

    import asyncio

    clip = resample(PcmFrame(asyncio.run(synthesize()), tts.sample_rate_hz), RATE).samples
    loud = np.flatnonzero(np.abs(clip) > 500)
    return clip[loud[0] : loud[-1] + 1]


def white_noise(level_dbfs: float, seconds: float = 2.0, seed: int = 0) -> Samples:
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, 32768 * 10 ** (level_dbfs / 20), int(RATE * seconds))
    return np.clip(noise, -32768, 32767).astype(np.int16)


def frames(samples: Samples, frame_ms: int) -> Iterator[PcmFrame]:
    yield from FrameChunker(frame_ms, RATE).push(PcmFrame(samples, RATE))


def probabilities(classifier: FrameClassifier, samples: Samples) -> np.ndarray:
    return np.array([classifier.speech_probability(f) for f in frames(samples, classifier.frame_ms)])


# --- WebRTC --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("threshold", "mode"), [(0.0, 0), (0.24, 0), (0.25, 1), (0.5, 2), (0.74, 2), (0.75, 3), (1.0, 3)]
)
def test_webrtc_threshold_maps_to_aggressiveness(threshold: float, mode: int) -> None:
    assert aggressiveness_for(threshold) == mode


@pytest.mark.parametrize("threshold", [-0.1, 1.01])
def test_webrtc_rejects_threshold_outside_unit_range(webrtc: WebrtcVad, threshold: float) -> None:
    with pytest.raises(ValueError):
        webrtc.open(threshold)


def test_webrtc_classifier_shape(webrtc: WebrtcVad) -> None:
    factory: ClassifierFactory = webrtc
    classifier = factory.open(0.5)
    assert (classifier.sample_rate_hz, classifier.frame_ms) == (16_000, 20)


def test_webrtc_silence_is_not_speech(webrtc: WebrtcVad) -> None:
    assert probabilities(webrtc.open(0.5), np.zeros(RATE, dtype=np.int16)).max() == 0.0


@pytest.mark.slow
def test_webrtc_speech_is_speech(webrtc: WebrtcVad, speech: Samples) -> None:
    p = probabilities(webrtc.open(0.5), speech)
    assert set(np.unique(p)) <= {0.0, 1.0}
    assert p.mean() > 0.8


def test_webrtc_aggressiveness_rejects_moderate_noise(webrtc: WebrtcVad) -> None:
    noise = white_noise(-30)
    lenient = probabilities(webrtc.open(0.0), noise).mean()
    aggressive = probabilities(webrtc.open(0.75), noise).mean()
    assert aggressive < 0.2
    assert lenient > aggressive + 0.5


def test_webrtc_sessions_do_not_share_state(webrtc: WebrtcVad) -> None:
    noise = white_noise(-30, seed=1)
    first, second = webrtc.open(0.0), webrtc.open(0.0)
    probabilities(first, white_noise(-30, seed=2))  # adapts `first` to the noise
    assert np.array_equal(probabilities(second, noise), probabilities(webrtc.open(0.0), noise))


@pytest.mark.parametrize(
    "frame",
    [PcmFrame.silence(30, RATE), PcmFrame.silence(20, 8000), PcmFrame.silence(32, RATE)],
)
def test_webrtc_rejects_frames_of_the_wrong_shape(webrtc: WebrtcVad, frame: PcmFrame) -> None:
    with pytest.raises(AudioFormatError):
        webrtc.open(0.5).speech_probability(frame)


def test_webrtc_takes_no_options() -> None:
    with pytest.raises(BackendError):
        webrtc_vad.load({"mode": 3})


# --- Silero --------------------------------------------------------------------------------


@pytest.mark.slow
def test_silero_classifier_shape(silero: SileroVad) -> None:
    factory: ClassifierFactory = silero
    classifier = factory.open(0.5)
    assert (classifier.sample_rate_hz, classifier.frame_ms) == (16_000, 32)


@pytest.mark.slow
def test_silero_silence_is_not_speech(silero: SileroVad) -> None:
    assert probabilities(silero.open(0.5), np.zeros(RATE, dtype=np.int16)).max() < 0.1


@pytest.mark.slow
def test_silero_speech_is_speech(silero: SileroVad, speech: Samples) -> None:
    p = probabilities(silero.open(0.5), speech)
    assert ((p >= 0.0) & (p <= 1.0)).all()
    assert np.median(p) > 0.8
    assert (p > 0.5).mean() > 0.7


@pytest.mark.slow
@pytest.mark.parametrize("level_dbfs", [-50.0, -30.0, -20.0])
def test_silero_noise_is_not_speech(silero: SileroVad, level_dbfs: float) -> None:
    p = probabilities(silero.open(0.5), white_noise(level_dbfs))
    assert (p > 0.5).mean() < 0.05


@pytest.mark.slow
def test_loud_noise_fools_webrtc_but_not_silero(webrtc: WebrtcVad, silero: SileroVad) -> None:
    noise = white_noise(-20, seed=3)
    assert probabilities(webrtc.open(1.0), noise).mean() > 0.5  # known WebRTC weakness
    assert probabilities(silero.open(0.5), noise).mean() < 0.1


@pytest.mark.slow
def test_silero_speech_after_silence_uses_its_own_history(silero: SileroVad, speech: Samples) -> None:
    # The recurrent state carries over between frames: the same speech frame scores
    # differently once the classifier has heard the sentence, and a fresh classifier or a
    # reset() one gives the first-frame answer again.
    first_frame = next(frames(speech, 32))
    fresh = silero.open(0.5).speech_probability(first_frame)
    warmed = silero.open(0.5)
    probabilities(warmed, speech)
    assert warmed.speech_probability(first_frame) != pytest.approx(fresh, abs=1e-4)
    warmed.reset()
    assert warmed.speech_probability(first_frame) == pytest.approx(fresh, abs=1e-6)


@pytest.mark.slow
def test_silero_sessions_do_not_share_state(silero: SileroVad, speech: Samples) -> None:
    busy, idle = silero.open(0.5), silero.open(0.5)
    silence = np.zeros(RATE // 2, dtype=np.int16)
    expected = probabilities(silero.open(0.5), silence)
    probabilities(busy, speech)
    assert np.allclose(probabilities(idle, silence), expected)


@pytest.mark.slow
@pytest.mark.parametrize(
    "frame",
    [PcmFrame.silence(20, RATE), PcmFrame(np.zeros(256, dtype=np.int16), 8000)],
)
def test_silero_rejects_frames_of_the_wrong_shape(silero: SileroVad, frame: PcmFrame) -> None:
    with pytest.raises(AudioFormatError):
        silero.open(0.5).speech_probability(frame)


def test_silero_takes_no_options() -> None:
    with pytest.raises(BackendError):
        silero_vad.load({"threads": 2})


@pytest.mark.slow
def test_silero_batch_matches_one_classifier_at_a_time(silero: SileroVad, speech: Samples) -> None:
    """Three sessions hearing different audio, classified in batches of three, get the same
    probabilities as each classified alone, frame by frame."""
    clips = [
        speech,
        white_noise(-30, seconds=len(speech) / RATE),
        np.concatenate([speech[4000:], speech[:4000]]),
    ]
    per_session = [list(frames(clip, silero_vad.FRAME_MS)) for clip in clips]
    expected = [probabilities(silero.open(0.5), clip) for clip in clips]
    batched = [silero.open(0.5) for _ in clips]
    got: list[list[float]] = [[], [], []]
    for step in range(min(len(f) for f in per_session)):
        batch = [(batched[i], per_session[i][step]) for i in range(3)]
        for i, p in enumerate(silero.speech_probabilities(batch)):
            got[i].append(p)
    for i in range(3):
        n = len(got[i])
        np.testing.assert_allclose(got[i], expected[i][:n], atol=1e-4)
    assert max(expected[0]) > 0.9 and max(expected[1]) < 0.5  # the sessions did differ


@pytest.mark.slow
def test_silero_batch_may_change_size_between_calls(silero: SileroVad, speech: Samples) -> None:
    a, b, alone = silero.open(0.5), silero.open(0.5), silero.open(0.5)
    speech_frames = list(frames(speech, silero_vad.FRAME_MS))
    expected = [alone.speech_probability(f) for f in speech_frames]
    got = []
    for step, frame in enumerate(speech_frames):
        batch = [(a, frame)] + ([(b, frame)] if step % 3 else [])  # b joins two batches in three
        got.append(silero.speech_probabilities(batch)[0])
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.slow
def test_silero_batch_refuses_a_classifier_twice_or_a_foreign_one(
    silero: SileroVad, webrtc: WebrtcVad
) -> None:
    frame = PcmFrame.silence(silero_vad.FRAME_MS, RATE)
    mine = silero.open(0.5)
    with pytest.raises(BackendError, match="at most one frame per classifier"):
        silero.speech_probabilities([(mine, frame), (mine, frame)])
    with pytest.raises(BackendError, match="opened by this silero VAD"):
        silero.speech_probabilities([(webrtc.open(0.5), frame)])
    with pytest.raises(AudioFormatError):
        silero.speech_probabilities([(mine, PcmFrame.silence(20, RATE))])
    assert silero.speech_probabilities([]) == []
