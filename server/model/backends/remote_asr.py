"""Speech-to-text from a remote server with an OpenAI-compatible transcription endpoint
(registry name `openai-asr`): OpenAI, vLLM, speaches, or another Voxgate's speech API.

One `POST {base_url}/audio/transcriptions` per utterance, multipart: `file` (a 16-bit mono
WAV of the utterance), `model`, `language` (when set), `response_format=json`, and
`stream=true` unless streaming is off. A streaming server answers server-sent events, in
OpenAI's shape (`transcript.text.delta` / `transcript.text.done`) or vLLM's
(`transcription.chunk` objects with `choices[0].delta.content`, then `[DONE]`); any other
server answers `{"text": ...}`, which is read the same way.

Order of calls:

    asr = load({"base_url": "http://models:8000/v1", "model": "whisper-1"})
    stream = asr.open_stream()           # one per utterance, cheap
    stream.push_audio(frame)             # 16 kHz (option sample_rate_hz) mono; kept in memory
    stream.end_input()                   # the utterance is over: the request is sent now
    async for transcript in stream: ...  # partials (when the server streams), then one final
    await stream.aclose()                # always; closes the request if one is open
    await asr.aclose()                   # at shutdown

Why nothing is sent before `end_input`: the endpoint takes a whole file, so the server cannot
start decoding before it has the utterance, and a request sent earlier (a guess at the end of
the turn) would cost a second decode whenever the caller goes on. What the hop costs is
therefore the server's decoding of the whole utterance after the end of speech (an embedded
recogniser decodes while the caller speaks), plus the upload: measured on loopback with
PocketSphinx behind a second Voxgate, the transcript came a median 0.1 s (a quiet box) to
0.7 s (a loaded 2-core box) later than with the same recogniser embedded (BENCHMARKS.md,
"Remote speech models"). `hypothesis` therefore stays "" while the caller speaks.

Invariants:
- Every failure is a `BackendError` from iterating the stream: refused or timed-out
  connections, HTTP 408/409/425/429/5xx and bodies that break off are `retryable`; other
  statuses and malformed answers are not (server/model/backends/remote_http.py).
- `timeout_s` bounds the wait for the response headers and for each piece of the body after
  them; the cascade's own `asr_final_timeout_s` bounds each transcript event as well.
- `stream: "auto"`: a server that refuses `stream=true` with HTTP 400/422 gets the request
  again without it, and this backend stops asking for streams (logged once).
- Audio beyond `max_utterance_s` drops the oldest (counted in `dropped_ms`); an utterance
  without audio is the final "" without any request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Literal

import httpx
import numpy as np

from server.audio import AudioFormatError, PcmFrame
from server.errors import BackendError
from server.model.backends.remote_http import Endpoint, OptionReader, status_error, transport_error
from server.model.base import Transcript, TranscriptionOptions
from server.wav import encode_wav

log = logging.getLogger(__name__)

BACKEND = "openai-asr"
StreamMode = Literal["auto", "on", "off"]
_CLOSE_TIMEOUT_S = 0.5


@dataclass(frozen=True, slots=True)
class RemoteAsrOptions:
    """model: the server's model name ("whisper-1", "gpt-4o-mini-transcribe", a vLLM model;
    a Voxgate ignores it unless it names a profile, e.g. "voxgate-quality").
    language: ISO 639-1 hint sent with each request ("" sends none).
    stream: "auto" (ask for a stream, read JSON too), "on" (ask, and fail without one),
    "off" (never ask). sample_rate_hz: the rate of the audio pushed (the cascade resamples
    the caller's audio to it). max_utterance_s: audio kept per utterance."""

    endpoint: Endpoint
    model: str = "whisper-1"
    language: str = "en"
    stream: StreamMode = "auto"
    sample_rate_hz: int = 16_000
    max_utterance_s: int = 120

    @classmethod
    def from_mapping(cls, options: Mapping[str, object]) -> RemoteAsrOptions:
        read = OptionReader(
            BACKEND,
            options,
            {
                "base_url",
                "api_key",
                "model",
                "language",
                "timeout_s",
                "connect_timeout_s",
                "stream",
                "sample_rate_hz",
                "max_utterance_s",
            },
        )
        stream = read.raw("stream", "auto")
        modes: dict[object, StreamMode] = {"auto": "auto", True: "on", False: "off"}
        if isinstance(stream, bool | str) and stream in modes:
            mode = modes[stream]
        else:
            raise BackendError(f"{BACKEND} option 'stream' must be \"auto\", true or false, not {stream!r}")
        model = read.text("model", "whisper-1")
        if not model:
            raise BackendError(f"{BACKEND} option 'model' must name the server's model")
        return cls(
            endpoint=read.endpoint(),
            model=model,
            language=read.text("language", "en"),
            stream=mode,
            sample_rate_hz=read.integer("sample_rate_hz", 16_000, 8_000, 48_000),
            max_utterance_s=read.integer("max_utterance_s", 120, 1, 3600),
        )


def load(options: Mapping[str, object] | None = None) -> RemoteAsr:
    """Build the backend; nothing is contacted until the first utterance ends."""
    return RemoteAsr(RemoteAsrOptions.from_mapping(options or {}))


class RemoteAsr:
    """`AsrBackend` over HTTP; one pooled `httpx.AsyncClient` shared by all streams."""

    def __init__(self, options: RemoteAsrOptions) -> None:
        self.options = options
        self.sample_rate_hz = options.sample_rate_hz
        self.url = options.endpoint.url("/audio/transcriptions")
        self._client = options.endpoint.client()
        self._asks_for_stream = options.stream != "off"

    def open_stream(self, transcription: TranscriptionOptions | None = None) -> RemoteAsrStream:
        """`transcription`: a session's language and prompt, sent with the request (the
        session's language replaces the configured one); a remote server does not translate."""
        return RemoteAsrStream(self, transcription or TranscriptionOptions())

    async def aclose(self) -> None:
        await self._client.aclose()

    async def transcribe(
        self, audio: PcmFrame, transcription: TranscriptionOptions | None = None
    ) -> AsyncGenerator[Transcript, None]:
        """Partials as the server streams them, then the final; see the module docstring."""
        wav = encode_wav(audio)
        hints = transcription or TranscriptionOptions()
        stream = self._asks_for_stream
        if stream and self.options.stream == "auto":
            try:
                async with contextlib.aclosing(self._request(wav, hints, stream=True)) as transcripts:
                    async for transcript in transcripts:
                        yield transcript
                return
            except _StreamRefused as refused:
                log.warning(
                    "transcription server refuses stream=true; asking for JSON from now on",
                    extra={"url": self.url, "status": refused.status},
                )
                self._asks_for_stream = False
                stream = False
        async with contextlib.aclosing(self._request(wav, hints, stream=stream)) as transcripts:
            async for transcript in transcripts:
                yield transcript

    async def _request(
        self, wav: bytes, hints: TranscriptionOptions, *, stream: bool
    ) -> AsyncGenerator[Transcript, None]:
        data = {"model": self.options.model, "response_format": "json"}
        language = hints.language or self.options.language
        if language:
            data["language"] = language
        if hints.prompt:
            data["prompt"] = hints.prompt
        if stream:
            data["stream"] = "true"
        files = {"file": ("utterance.wav", wav, "audio/wav")}
        final: Transcript | None = None
        try:
            async with self._client.stream("POST", self.url, data=data, files=files) as response:
                if response.status_code != 200:
                    if stream and self.options.stream == "auto" and response.status_code in (400, 422):
                        await response.aread()
                        raise _StreamRefused(response.status_code)
                    raise await status_error(response, self.url)
                content_type = response.headers.get("content-type", "")
                if content_type.startswith("text/event-stream"):
                    async with contextlib.aclosing(_read_events(response)) as events:
                        async for transcript in events:
                            if transcript.is_final:
                                final = transcript
                                break
                            yield transcript
                elif stream and self.options.stream == "on":
                    raise BackendError(
                        f"{self.url} answered {content_type or 'no content type'}, not the"
                        ' event stream asked for (option stream=true); set stream to "auto"'
                    )
                else:
                    final = Transcript(_json_text(await response.aread()), is_final=True)
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.url, self.options.endpoint) from exc
        assert final is not None
        yield final  # after the response is closed: a consumer that stops here holds nothing


class _StreamRefused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class RemoteAsrStream:
    """One utterance; see the module docstring for the order of calls. Iterate it once,
    after (or while waiting for) `end_input()`."""

    hypothesis: str

    def __init__(self, backend: RemoteAsr, transcription: TranscriptionOptions) -> None:
        self._backend = backend
        self._transcription = transcription
        self._chunks: list[PcmFrame] = []
        self._samples = 0
        self._max_samples = backend.options.max_utterance_s * backend.sample_rate_hz
        self.dropped_ms = 0
        self.hypothesis = ""
        self._input_ended = False
        self._closed = False
        self._iterator: AsyncGenerator[Transcript, None] | None = None

    @property
    def decoded_ms(self) -> None:
        return None  # the server hears the utterance once it ends

    def push_audio(self, frame: PcmFrame) -> None:
        """Keep `frame` for the request; never blocks."""
        if self._closed or self._input_ended:
            raise BackendError("audio pushed after end_input() or aclose()")
        if frame.sample_rate_hz != self._backend.sample_rate_hz:
            raise AudioFormatError(
                f"{BACKEND} expects {self._backend.sample_rate_hz} Hz audio, got {frame.sample_rate_hz} Hz"
            )
        self._chunks.append(frame)
        self._samples += frame.sample_count
        while self._samples - self._chunks[0].sample_count >= self._max_samples:
            oldest = self._chunks.pop(0)
            self._samples -= oldest.sample_count
            self.dropped_ms += int(oldest.duration_ms)

    def end_input(self) -> None:
        """No more audio: iterating sends the utterance. Idempotent."""
        self._input_ended = True

    def __aiter__(self) -> AsyncIterator[Transcript]:
        if self._iterator is not None:
            raise BackendError(f"a {BACKEND} stream is iterated once")
        self._iterator = self._transcripts()
        return self._iterator

    async def _transcripts(self) -> AsyncGenerator[Transcript, None]:
        if self._closed:
            return
        if not self._input_ended:
            raise BackendError(f"{BACKEND} sends the utterance at end_input(); call it before iterating")
        if not self._samples:
            yield Transcript("", is_final=True)
            return
        audio = PcmFrame(np.concatenate([c.samples for c in self._chunks]), self._backend.sample_rate_hz)
        self._chunks = []
        async with contextlib.aclosing(self._backend.transcribe(audio, self._transcription)) as transcripts:
            async for transcript in transcripts:
                if not transcript.is_final:
                    self.hypothesis = transcript.text
                yield transcript

    async def aclose(self) -> None:
        """Forget the audio and close the request if it is open (its iterator is closed)."""
        self._closed = True
        self._chunks = []
        iterator, self._iterator = self._iterator, None
        if iterator is not None:
            # RuntimeError: the iterator is running in another task (that task closes it)
            with contextlib.suppress(RuntimeError, TimeoutError):
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await iterator.aclose()


async def _read_events(response: httpx.Response) -> AsyncGenerator[Transcript, None]:
    """Transcripts from a server-sent event stream: a partial (all text so far) per delta,
    then the final, from `transcript.text.done` or, in vLLM's shape, at `[DONE]`."""
    text = ""
    data_lines: list[str] = []
    body = response.aiter_lines()
    while True:
        line = await anext(body, None)
        if line is not None and line.startswith("data:"):
            data_lines.append(line[5:].removeprefix(" "))
            continue
        if line is not None and (line or not data_lines):
            continue  # comments (":"), "event:"/"id:" fields, keep-alive blank lines
        if not data_lines:  # the body ended
            raise BackendError(
                "transcription stream ended before transcript.text.done or [DONE]", retryable=True
            )
        data, data_lines = "\n".join(data_lines), []  # a blank line, or the end, ends an event
        if data.strip() == "[DONE]":
            yield Transcript(text.strip(), is_final=True)
            return
        kind, piece = _parse_event(data)
        if kind == "done":
            yield Transcript(piece.strip(), is_final=True)
            return
        if piece:
            text += piece
            yield Transcript(text.strip(), is_final=False)


def _parse_event(data: str) -> tuple[Literal["delta", "done"], str]:
    """("delta", text piece) or ("done", the whole transcript) of one event's data."""
    try:
        event = json.loads(data)
    except ValueError as exc:
        raise BackendError("malformed transcription stream: an event is not JSON") from exc
    if not isinstance(event, dict):
        raise BackendError("malformed transcription stream: an event is not an object")
    kind = event.get("type")
    if kind == "error" or "error" in event:
        error = event.get("error")
        message = error.get("message", error) if isinstance(error, dict) else error
        raise BackendError(f"transcription stream reported an error: {message}")
    if kind == "transcript.text.delta":
        return "delta", _text_field(event, "delta")
    if kind == "transcript.text.done":
        return "done", _text_field(event, "text")
    if isinstance(event.get("choices"), list):  # vLLM: transcription.chunk
        choices = event["choices"]
        choice = choices[0] if choices else {}
        delta = choice.get("delta") if isinstance(choice, dict) else None
        content = delta.get("content") if isinstance(delta, dict) else None
        if content is not None and not isinstance(content, str):
            raise BackendError("malformed transcription stream: delta.content is not text")
        return "delta", content or ""
    return "delta", ""  # other event types (usage, logprobs) carry no text


def _text_field(event: dict[str, object], name: str) -> str:
    value = event.get(name)
    if not isinstance(value, str):
        raise BackendError(f"malformed transcription stream: {event.get('type')} without a text {name!r}")
    return value


def _json_text(body: bytes) -> str:
    try:
        answer = json.loads(body)
    except ValueError as exc:
        raise BackendError("malformed transcription answer: not JSON") from exc
    text = answer.get("text") if isinstance(answer, dict) else None
    if not isinstance(text, str):
        raise BackendError('malformed transcription answer: no "text" string')
    return text.strip()
