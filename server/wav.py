"""WAV files of 16-bit PCM: what the speech endpoints (`/v1/audio/transcriptions`) carry.

Pure functions over bytes, like the codecs in `server/audio.py`: `encode_wav` writes a mono
16-bit file, `decode_wav` reads a 16-bit PCM file (mono, or several channels averaged to
mono) and raises `AudioFormatError` saying what is wrong with anything else.
"""

from __future__ import annotations

import io
import wave

import numpy as np

from server.audio import AudioFormatError, PcmFrame

MIN_SAMPLE_RATE_HZ = 8_000
MAX_SAMPLE_RATE_HZ = 96_000
_MAX_CHANNELS = 8


def encode_wav(frame: PcmFrame) -> bytes:
    """A mono 16-bit PCM WAV file of `frame`."""
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(frame.sample_rate_hz)
        writer.writeframes(frame.to_bytes())
    return out.getvalue()


def decode_wav(data: bytes) -> PcmFrame:
    """The audio of a 16-bit PCM WAV file, mono (channels averaged), at the file's rate.
    Raises `AudioFormatError` for anything else: not RIFF/WAVE, compressed, 8/24/32-bit,
    float, a rate outside 8-96 kHz, or a file cut short."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioFormatError("not a WAV file (no RIFF/WAVE header); send 16-bit PCM WAV")
    try:
        with wave.open(io.BytesIO(data), "rb") as reader:
            channels = reader.getnchannels()
            width_bytes = reader.getsampwidth()
            rate_hz = reader.getframerate()
            count = reader.getnframes()
            raw = reader.readframes(count)
    except (wave.Error, EOFError) as exc:  # compressed or float formats, broken chunks
        raise AudioFormatError(f"unreadable WAV file ({exc}); send 16-bit PCM WAV") from exc
    if width_bytes != 2:
        raise AudioFormatError(f"WAV samples are {8 * width_bytes}-bit; send 16-bit PCM WAV")
    if not 1 <= channels <= _MAX_CHANNELS:
        raise AudioFormatError(f"WAV file has {channels} channels; send mono")
    if not MIN_SAMPLE_RATE_HZ <= rate_hz <= MAX_SAMPLE_RATE_HZ:
        raise AudioFormatError(
            f"WAV sample rate {rate_hz} Hz is outside {MIN_SAMPLE_RATE_HZ}-{MAX_SAMPLE_RATE_HZ} Hz"
        )
    usable = len(raw) - len(raw) % (2 * channels)  # a file cut mid-frame: drop the partial frame
    samples = np.frombuffer(raw[:usable], dtype="<i2")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).round().astype(np.int16)
    return PcmFrame(samples.astype(np.int16), rate_hz)
