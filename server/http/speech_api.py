"""The speech API: Voxgate's embedded recogniser and voice behind OpenAI's audio endpoints,
so that other Voxgates (backends `openai-asr` / `openai-tts`) or any OpenAI client can use
this box's models ("a models tier"; README, "Deployments").

    POST /v1/audio/transcriptions   multipart: file (16-bit PCM WAV, any rate 8-96 kHz, mono or
                                    channels averaged), model, language, response_format
                                    (json | text), stream (true: server-sent events)
        -> {"text": "..."}  or  text/event-stream of
           {"type": "transcript.text.delta", "delta": "..."} ... {"type": "transcript.text.done", "text": "..."}
    POST /v1/audio/speech           JSON {"input", "voice", "model", "response_format": "pcm" | "wav"}
        -> pcm: raw 24 kHz 16-bit mono little-endian, streamed as it is synthesized;
           wav: the same audio in one WAV file (the default: OpenAI's mp3 is not written here)

`model` picks a profile as the realtime endpoint does ("voxgate-quality" or "quality"); any
other name (e.g. "whisper-1", "tts-1") gets the default profile. `voice`: a voice of the
profile's text-to-speech (eSpeak names such as "en-us", Kokoro's "jf_alpha", ...), or one of
OpenAI's names (alloy, echo, ...), which speak with the default voice as they do in a
realtime session; anything else is refused. Streaming deltas: the recogniser's hypotheses
may revise earlier words, which a delta cannot, so a delta is sent only when the hypothesis
extends what was sent; `transcript.text.done` always holds the whole transcript.

Every refusal is an OpenAI-style JSON error (`{"error": {"type", "code", "message",
"param"}}`): 400 for bad input (no file, not WAV, empty, bad JSON, unknown voice, unsupported
format), 413 for an upload over `speech_api_max_upload_bytes`, 401/403 without an API key
when keys are set, 503 (Retry-After) when `speech_api_max_requests` are in progress or a
retryable model failure, 500 otherwise. A failure after streaming began ends an SSE stream
with an `error` event, and cuts a pcm body (the client sees it broken off).

Models: the requests use the backends the realtime sessions share (the ModelCatalog), with
the same per-call deadlines; inference runs where those backends run it, never on the event
loop. A profile whose recogniser or voice is itself remote (`openai-asr`, `openai-tts`) is
not served (HTTP 501): a gateway pointed at itself would loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import Receive, Scope, Send

from server.audio import AudioFormatError, PcmFrame, StreamResampler, resample
from server.errors import BackendError
from server.http.client_secrets import error_response, require_api_key
from server.http.runtime import Runtime
from server.model.base import AsrBackend, TtsBackend
from server.model.deadlines import DeadlineIterator
from server.model.profiles import Profile, profile_for_model
from server.model.voices import OPENAI_VOICES, voice_is_known
from server.wav import decode_wav, encode_wav

log = logging.getLogger(__name__)

router = APIRouter()

OUTPUT_SAMPLE_RATE_HZ = 24_000  # OpenAI's pcm
MAX_AUDIO_S = 600  # one transcription request; a decoder is held for all of it
MAX_INPUT_CHARS = 4096  # OpenAI's limit on /audio/speech input
MAX_SPEECH_BODY_BYTES = 64 * 1024
REMOTE_BACKENDS = frozenset({"openai-asr", "openai-tts"})
_TRANSCRIPTION_FORMATS = ("json", "text")
_SPEECH_FORMATS = ("pcm", "wav")


class SpeechRequests:
    """The speech requests in progress, capped (a request beyond the cap is refused at once,
    never queued: the realtime sessions share these models)."""

    def __init__(self, max_requests: int) -> None:
        self.max_requests = max_requests
        self.in_progress = 0

    def try_take(self) -> bool:
        if self.in_progress >= self.max_requests:
            return False
        self.in_progress += 1
        return True

    def give_back(self) -> None:
        self.in_progress -= 1


class _Refusal(Exception):
    """A request refused before any work: becomes `error_response(status, ...)`."""

    def __init__(self, status: int, message: str, *, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param

    def response(self) -> JSONResponse:
        return error_response(self.status, str(self), code=self.code, param=self.param)


class _ReleasingStream(StreamingResponse):
    """A streamed answer that, however it ends (finished, client gone, failed), closes its
    body generator and gives its request slot back."""

    def __init__(self, body: AsyncGenerator[bytes, None], release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(body, **kwargs)
        self._body = body
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self._body.aclose()
            finally:
                self._release()


@dataclass(frozen=True, slots=True)
class _Backends:
    profile: str
    asr: AsrBackend
    tts: TtsBackend


async def _backends(request: Request, model: str | None) -> _Backends:
    runtime: Runtime = request.app.state.runtime
    catalog = runtime.catalog
    if catalog is None:
        raise _Refusal(
            501, "this server has no model catalog to serve speech from", code="speech_api_unavailable"
        )
    name = profile_for_model(model, catalog.default_profile)
    profile = catalog.profiles[name]
    if not isinstance(profile, Profile):
        raise _Refusal(
            501,
            f"profile {name!r} is a whole model (an upstream realtime one): it has no recogniser or voice to serve",
            code="speech_api_unavailable",
        )
    remote = sorted({profile.asr, profile.tts} & REMOTE_BACKENDS)
    if remote:
        raise _Refusal(
            501,
            f"profile {name!r} uses remote speech ({', '.join(remote)}); send this to that server",
            code="speech_api_unavailable",
        )
    asr, tts = await asyncio.to_thread(catalog.speech_backends, name)
    return _Backends(name, asr, tts)


def _take_slot(request: Request) -> SpeechRequests:
    requests: SpeechRequests = request.app.state.speech_requests
    if not requests.try_take():
        raise _Refusal(
            503,
            f"{requests.max_requests} speech requests are in progress; try again shortly",
            code="speech_api_busy",
        )
    return requests


def _backend_refusal(exc: BackendError) -> _Refusal:
    status = 503 if exc.retryable else 500
    return _Refusal(status, f"the model failed: {exc}", code="backend_error")


# --- /v1/audio/transcriptions ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _TranscriptionRequest:
    audio: PcmFrame
    model: str | None
    response_format: str
    stream: bool


async def _capped(stream: AsyncIterator[bytes], limit_bytes: int) -> AsyncGenerator[bytes, None]:
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit_bytes:
            raise _Refusal(413, f"the upload is over {limit_bytes} bytes", code="request_too_large")
        yield chunk


async def _read_transcription_request(request: Request) -> _TranscriptionRequest:
    runtime: Runtime = request.app.state.runtime
    limit_bytes = runtime.settings.speech_api_max_upload_bytes
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise _Refusal(
            400, "send multipart/form-data with the audio in a field named file", code="invalid_request"
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit_bytes:
        raise _Refusal(413, f"the upload is over {limit_bytes} bytes", code="request_too_large")
    parser = MultiPartParser(
        request.headers,
        _capped(request.stream(), limit_bytes),
        max_files=1,
        max_fields=16,
        max_part_size=4096,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise _Refusal(400, f"unreadable multipart body: {exc}", code="invalid_request") from exc
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise _Refusal(
                400, "no audio: send the WAV file in a field named file", code="missing_file", param="file"
            )
        data = await upload.read()
        fields = {key: value for key, value in form.multi_items() if isinstance(value, str)}
    finally:
        await form.close()
    if not data:
        raise _Refusal(400, "the file is empty", code="empty_file", param="file")
    try:
        audio = decode_wav(data)
    except AudioFormatError as exc:
        raise _Refusal(400, str(exc), code="invalid_audio", param="file") from exc
    if not audio.sample_count:
        raise _Refusal(400, "the WAV file holds no audio", code="empty_file", param="file")
    if audio.duration_ms > MAX_AUDIO_S * 1000:
        raise _Refusal(400, f"the audio is over {MAX_AUDIO_S} s", code="audio_too_long", param="file")
    response_format = fields.get("response_format", "json")
    if response_format not in _TRANSCRIPTION_FORMATS:
        raise _Refusal(
            400,
            f"response_format {response_format!r} is not supported; use one of {', '.join(_TRANSCRIPTION_FORMATS)}",
            code="unsupported_response_format",
            param="response_format",
        )
    stream = fields.get("stream", "false").lower()
    if stream not in ("true", "false"):
        raise _Refusal(400, "stream must be true or false", code="invalid_request", param="stream")
    language = fields.get("language", "")
    if language and language.lower().split("-")[0] != "en":
        raise _Refusal(
            400,
            f"language {language!r} is not supported: the embedded recognisers are English",
            code="unsupported_language",
            param="language",
        )
    return _TranscriptionRequest(audio, fields.get("model"), response_format, stream == "true")


async def _transcripts(
    runtime: Runtime, asr: AsrBackend, audio: PcmFrame
) -> AsyncGenerator[tuple[str, bool], None]:
    """(text, is_final) of the recogniser's events for `audio`, under the realtime deadline."""
    stream = asr.open_stream()
    try:
        stream.push_audio(resample(audio, asr.sample_rate_hz))
        stream.end_input()
        wait_s = runtime.settings.asr_final_timeout_s
        async for transcript in DeadlineIterator(
            aiter(stream), stage="speech-to-text", first_item_s=wait_s, gap_s=wait_s
        ):
            yield transcript.text.strip(), transcript.is_final
            if transcript.is_final:
                return
        raise BackendError("the recogniser ended without a final transcript")
    finally:
        await stream.aclose()


@router.post("/v1/audio/transcriptions")
async def transcriptions(request: Request) -> Response:
    refusal = require_api_key(request)
    if refusal is not None:
        return refusal
    runtime: Runtime = request.app.state.runtime
    try:
        asked = await _read_transcription_request(request)
        backends = await _backends(request, asked.model)
        slots = _take_slot(request)
    except _Refusal as exc:
        return exc.response()
    if asked.stream:
        events = _transcription_events(runtime, backends.asr, asked.audio)
        return _ReleasingStream(
            events, slots.give_back, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    text = ""
    try:
        async with contextlib.aclosing(_transcripts(runtime, backends.asr, asked.audio)) as transcripts:
            async for words, is_final in transcripts:
                if is_final:
                    text = words
                    break
    except BackendError as exc:
        log.warning("speech API transcription failed", extra={"error": str(exc)})
        return _backend_refusal(exc).response()
    finally:
        slots.give_back()
    if asked.response_format == "text":
        return PlainTextResponse(text)
    return JSONResponse({"text": text})


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


async def _transcription_events(
    runtime: Runtime, asr: AsrBackend, audio: PcmFrame
) -> AsyncGenerator[bytes, None]:
    sent = ""
    transcripts = _transcripts(runtime, asr, audio)
    try:
        async for text, is_final in transcripts:
            if is_final:
                yield _sse({"type": "transcript.text.done", "text": text})
                return
            if text.startswith(sent) and len(text) > len(sent):  # a revision waits for the final
                yield _sse({"type": "transcript.text.delta", "delta": text[len(sent) :]})
                sent = text
    except BackendError as exc:
        log.warning("speech API transcription failed", extra={"error": str(exc)})
        refusal = _backend_refusal(exc)
        yield _sse(
            {
                "type": "error",
                "error": {"type": "server_error", "code": refusal.code, "message": str(refusal)},
            }
        )
    finally:
        await transcripts.aclose()


# --- /v1/audio/speech ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _SpeechRequest:
    text: str
    voice: str
    model: str | None
    response_format: str


async def _read_speech_request(request: Request) -> _SpeechRequest:
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_SPEECH_BODY_BYTES:
            raise _Refusal(
                413, f"the request body is over {MAX_SPEECH_BODY_BYTES} bytes", code="request_too_large"
            )
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _Refusal(400, f"the request body is not JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise _Refusal(400, "the request body must be a JSON object", code="invalid_json")
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        raise _Refusal(400, "input must be non-empty text", code="invalid_input", param="input")
    if len(text) > MAX_INPUT_CHARS:
        raise _Refusal(
            400, f"input is over {MAX_INPUT_CHARS} characters", code="input_too_long", param="input"
        )
    voice = body.get("voice", "")
    if not isinstance(voice, str):
        raise _Refusal(400, "voice must be a voice name", code="invalid_voice", param="voice")
    response_format = body.get("response_format", "wav")
    if response_format not in _SPEECH_FORMATS:
        raise _Refusal(
            400,
            f"response_format {response_format!r} is not supported; use one of {', '.join(_SPEECH_FORMATS)}",
            code="unsupported_response_format",
            param="response_format",
        )
    speed = body.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not math.isclose(speed, 1.0):
        raise _Refusal(400, "only speed 1.0 is supported", code="unsupported_speed", param="speed")
    stream_format = body.get("stream_format", "audio")
    if stream_format != "audio":
        raise _Refusal(
            400,
            "only stream_format audio is supported",
            code="unsupported_stream_format",
            param="stream_format",
        )
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _Refusal(400, "model must be a string", code="invalid_request", param="model")
    return _SpeechRequest(text.strip(), voice, model, response_format)


async def _backend_voice(tts: TtsBackend, voice: str) -> str:
    """The voice to pass to `tts` ("" = its default); an unknown name is a `_Refusal`."""
    if not voice or voice in OPENAI_VOICES:
        return ""
    if not await asyncio.to_thread(voice_is_known, tts, voice):
        raise _Refusal(
            400,
            f"unknown voice {voice!r}: use a voice of this server's text-to-speech or an OpenAI voice name",
            code="unknown_voice",
            param="voice",
        )
    return voice


async def _speech(runtime: Runtime, tts: TtsBackend, text: str, voice: str) -> AsyncGenerator[bytes, None]:
    """The 24 kHz PCM of `text`, as it is synthesized (under the realtime deadline)."""
    resampler = StreamResampler(tts.sample_rate_hz, OUTPUT_SAMPLE_RATE_HZ)
    wait_s = runtime.settings.tts_phrase_timeout_s
    frames = DeadlineIterator(
        tts.synthesize(text, voice), stage="text-to-speech", first_item_s=wait_s, gap_s=wait_s
    )
    try:
        async for frame in frames:
            out = resampler.push(frame)
            if out.sample_count:
                yield out.to_bytes()
        tail = resampler.flush()
        if tail.sample_count:
            yield tail.to_bytes()
    finally:
        await frames.aclose()


async def _after_first(first: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    try:
        yield first
        async for piece in rest:
            yield piece
    except BackendError as exc:
        # the status is sent: cutting the body is how the client learns (it sees it broken off)
        log.warning("speech API synthesis failed mid-stream", extra={"error": str(exc)})
        raise
    finally:
        await rest.aclose()


@router.post("/v1/audio/speech")
async def speech(request: Request) -> Response:
    refusal = require_api_key(request)
    if refusal is not None:
        return refusal
    runtime: Runtime = request.app.state.runtime
    try:
        asked = await _read_speech_request(request)
        backends = await _backends(request, asked.model)
        voice = await _backend_voice(backends.tts, asked.voice)
        slots = _take_slot(request)
    except _Refusal as exc:
        return exc.response()
    audio = _speech(runtime, backends.tts, asked.text, voice)
    handed_over = False
    try:
        if asked.response_format == "wav":
            pcm = b"".join([piece async for piece in audio])
            return Response(
                encode_wav(PcmFrame.from_bytes(pcm, OUTPUT_SAMPLE_RATE_HZ)), media_type="audio/wav"
            )
        first = await anext(audio, b"")  # a failure before any audio is still an HTTP error
        handed_over = True
        return _ReleasingStream(
            _after_first(first, audio),
            slots.give_back,
            media_type="audio/pcm",
            headers={"X-Sample-Rate": str(OUTPUT_SAMPLE_RATE_HZ)},
        )
    except BackendError as exc:
        log.warning("speech API synthesis failed", extra={"error": str(exc)})
        return _backend_refusal(exc).response()
    finally:
        if not handed_over:
            await audio.aclose()
            slots.give_back()
