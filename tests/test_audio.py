from __future__ import annotations

import numpy as np
import pytest

from server.audio import (
    ALAW_8K,
    ULAW_8K,
    AudioFormat,
    AudioFormatError,
    Encoding,
    FrameChunker,
    PcmFrame,
    StreamResampler,
    alaw_decode,
    alaw_encode,
    resample,
    ulaw_decode,
    ulaw_encode,
)

# Reference code points from ITU-T G.711 tables (same as the C reference implementation).
ULAW_CASES = [(0, 0xFF), (-1, 0x7E), (1000, 0xCE), (-1000, 0x4E), (32767, 0x80), (-32768, 0x00)]
ALAW_CASES = [(0, 0xD5), (-1, 0x55), (1000, 0xFA), (-1000, 0x7A), (32767, 0xAA), (-32768, 0x2A)]


@pytest.mark.parametrize(("sample", "code"), ULAW_CASES)
def test_ulaw_encode_reference_points(sample: int, code: int) -> None:
    assert ulaw_encode(np.array([sample], dtype=np.int16)) == bytes([code])


@pytest.mark.parametrize(("sample", "code"), ALAW_CASES)
def test_alaw_encode_reference_points(sample: int, code: int) -> None:
    assert alaw_encode(np.array([sample], dtype=np.int16)) == bytes([code])


@pytest.mark.parametrize(("encode", "decode"), [(ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)])
def test_g711_round_trip_error_is_small(encode, decode) -> None:  # type: ignore[no-untyped-def]
    x = np.linspace(-30000, 30000, 5000).astype(np.int16)
    y = decode(encode(x)).astype(np.int32)
    rel = np.abs(y - x) / np.maximum(np.abs(x), 256)
    assert rel.max() < 0.07  # G.711 is ~4 % worst-case relative error above the linear segment


def test_decoded_levels_encode_back_to_the_same_level() -> None:
    codes = bytes(range(256))
    for encode, decode in ((ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)):
        levels = decode(codes)
        assert decode(encode(levels)).tolist() == levels.tolist()


def test_pcm16_odd_bytes_rejected() -> None:
    with pytest.raises(AudioFormatError):
        AudioFormat(Encoding.PCM16, 24_000).decode(b"\x00\x01\x02")


def test_format_byte_sizes() -> None:
    assert AudioFormat(Encoding.PCM16, 24_000).bytes_for_ms(20) == 960
    assert ULAW_8K.bytes_for_ms(20) == 160
    assert ALAW_8K.decode(b"\xd5" * 160).duration_ms == 20


def test_stream_resampler_matches_length_and_keeps_a_tone() -> None:
    rate_in, rate_out = 24_000, 16_000
    t = np.arange(rate_in) / rate_in
    x = (np.sin(2 * np.pi * 440 * t) * 10000).astype(np.int16)
    rs = StreamResampler(rate_in, rate_out)
    parts = [rs.push(PcmFrame(x[i : i + 480], rate_in)).samples for i in range(0, len(x), 480)]
    parts.append(rs.flush().samples)
    y = np.concatenate(parts)
    assert abs(len(y) - rate_out) <= 2
    spectrum = np.abs(np.fft.rfft(y[:rate_out].astype(np.float64), n=rate_out))
    assert abs(int(np.argmax(spectrum)) - 440) <= 1


def test_resample_whole_clip() -> None:
    frame = PcmFrame(np.zeros(22_050, dtype=np.int16), 22_050)
    assert resample(frame, 24_000).sample_count == 24_000


def test_chunker_keeps_remainder() -> None:
    chunker = FrameChunker(20, 16_000)
    frames = chunker.push(PcmFrame(np.arange(700, dtype=np.int16), 16_000))
    assert [f.sample_count for f in frames] == [320, 320]
    assert chunker.pending_samples == 60
    more = chunker.push(PcmFrame(np.arange(260, dtype=np.int16), 16_000))
    assert len(more) == 1 and more[0].samples[0] == 640
    assert chunker.flush() is None
