"""Text-to-speech from a remote server with an OpenAI-compatible speech endpoint (registry
name `openai-tts`): OpenAI, Kokoro-FastAPI, speaches, or another Voxgate's speech API.

One `POST {base_url}/audio/speech` per phrase (the cascade calls `synthesize` phrase by
phrase), JSON `{"model", "input", "voice", "response_format": "pcm"}`; the answer is raw
little-endian 16-bit mono PCM (OpenAI's `pcm`: 24 kHz), read as it arrives.

Order of calls:

    tts = load({"base_url": "http://models:8000/v1", "voice": "alloy"})
    async for frame in tts.synthesize("Hello there.", voice=""):   # "" = option voice
        ...   # PcmFrames at tts.sample_rate_hz, one per piece of the body that arrives
    await tts.aclose()                                               # at shutdown

Invariants:
- Frames hold whole samples: a piece of the body that ends inside a sample keeps its odd byte
  for the next piece (a body with an odd length loses its last byte).
- Leaving the iteration early (barge-in, cancel) closes the HTTP response, so the server
  stops synthesizing.
- Every failure is a `BackendError`: refused or timed-out connections, HTTP 408/409/425/429/
  5xx and bodies that break off are `retryable`; other statuses (an unknown voice or model)
  and answers that are not audio (JSON, text) are not. `timeout_s` bounds the wait for the
  headers and for each piece of the body; the cascade's `tts_phrase_timeout_s` also applies.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass

import httpx

from server.audio import PcmFrame
from server.errors import BackendError
from server.model.backends.remote_http import Endpoint, OptionReader, status_error, transport_error

log = logging.getLogger(__name__)

BACKEND = "openai-tts"
_NOT_AUDIO = ("application/json", "text/")


@dataclass(frozen=True, slots=True)
class RemoteTtsOptions:
    """model: the server's model name ("tts-1", "kokoro"; a Voxgate ignores it unless it
    names a profile). voice: sent when the session has no voice of its own (the session's
    voice, VOXGATE_VOICE or session.update, wins: set it to a voice the server knows).
    sample_rate_hz: the rate of the PCM the server sends (OpenAI and Voxgate: 24000)."""

    endpoint: Endpoint
    model: str = "tts-1"
    voice: str = "alloy"
    sample_rate_hz: int = 24_000

    @classmethod
    def from_mapping(cls, options: Mapping[str, object]) -> RemoteTtsOptions:
        read = OptionReader(
            BACKEND,
            options,
            {"base_url", "api_key", "model", "voice", "timeout_s", "connect_timeout_s", "sample_rate_hz"},
        )
        model = read.text("model", "tts-1")
        voice = read.text("voice", "alloy")
        if not model or not voice:
            raise BackendError(f"{BACKEND} options 'model' and 'voice' must not be empty")
        return cls(
            endpoint=read.endpoint(),
            model=model,
            voice=voice,
            sample_rate_hz=read.integer("sample_rate_hz", 24_000, 8_000, 48_000),
        )


def load(options: Mapping[str, object] | None = None) -> RemoteTts:
    """Build the backend; nothing is contacted until the first phrase."""
    return RemoteTts(RemoteTtsOptions.from_mapping(options or {}))


class RemoteTts:
    """`TtsBackend` over HTTP; one pooled `httpx.AsyncClient` shared by all sessions."""

    def __init__(self, options: RemoteTtsOptions) -> None:
        self.options = options
        self.sample_rate_hz = options.sample_rate_hz
        self.url = options.endpoint.url("/audio/speech")
        self._client = options.endpoint.client()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def synthesize(self, text: str, voice: str, speed: float = 1.0) -> AsyncGenerator[PcmFrame, None]:
        """Speak one phrase with `voice` ("" = the option voice) at `speed` (sent when it is not
        1.0, as OpenAI's speech API takes it); frames as bytes arrive."""
        text = text.strip()
        if not text:
            return
        body: dict[str, object] = {
            "model": self.options.model,
            "input": text,
            "voice": voice or self.options.voice,
            "response_format": "pcm",
        }
        if speed != 1.0:
            body["speed"] = speed
        try:
            async with self._client.stream("POST", self.url, json=body) as response:
                if response.status_code != 200:
                    raise await status_error(response, self.url)
                content_type = response.headers.get("content-type", "")
                if content_type.startswith(_NOT_AUDIO):
                    raise BackendError(
                        f"{self.url} answered {content_type}, not raw PCM audio (response_format pcm)"
                    )
                odd = b""
                async for piece in response.aiter_bytes():
                    data = odd + piece
                    whole = len(data) - len(data) % 2
                    odd = data[whole:]
                    if whole:
                        yield PcmFrame.from_bytes(data[:whole], self.sample_rate_hz)
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.url, self.options.endpoint) from exc
