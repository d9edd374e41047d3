"""A remote language model behind an OpenAI-compatible chat-completions endpoint.

Works with vLLM, Ollama, the llama.cpp server and hosted APIs: one
`POST {base_url}/chat/completions` with `stream: true` per reply, read as server-sent events
(`data: {...}` lines, ending with `data: [DONE]`).

Order of calls:

    llm = load({"base_url": "http://127.0.0.1:8000/v1", "model": "qwen2.5-1.5b-instruct"})
    async for piece in llm.complete(history, options): ...   # text pieces as they arrive
    await llm.aclose()                                        # at shutdown

Invariants:
- `options.instructions` is the system message (DEFAULT_INSTRUCTIONS when empty), followed by
  the history in order; an interrupted assistant reply ends with INTERRUPTED_MARK.
- Leaving the iteration early closes the HTTP response, so the server stops generating.
- Every failure raises `BackendError`: refused/timed-out connections, HTTP 408/409/429/5xx and
  streams that break off are `retryable`; other HTTP statuses and malformed streams are not.
- `connect_timeout_s` bounds connecting; `timeout_s` bounds the wait for the response headers
  and for each chunk after them, so a stalled stream fails instead of hanging the reply.
- Tools: `options.tools` (server and client functions) are sent as `tools` with its
  `tool_choice`; streamed `delta.tool_calls` fragments are joined by `index` and each call is
  yielded as one `ToolCallRequest` when the stream ends. History messages with `tool_calls`
  and `tool` results are sent in the chat-completions shape.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from server.errors import BackendError
from server.model.base import Message, SessionOptions, ToolCallRequest
from server.model.tool_calls import ForcedTool, ToolSpec

DEFAULT_INSTRUCTIONS = (
    "You are a friendly customer-service agent on a phone call. Reply in one or two short,"
    " spoken-style sentences, without lists or formatting."
)
INTERRUPTED_MARK = "—"
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_ERROR_BODY_CHARS = 300


@dataclass(frozen=True, slots=True)
class OpenAiLlmOptions:
    """base_url: up to and including the API version, e.g. "http://127.0.0.1:11434/v1".
    api_key: sent as a bearer token when not empty. model: the served model's name.
    timeout_s: longest wait for the response headers and between two stream chunks.
    connect_timeout_s: longest wait for the TCP/TLS connection.
    images: whether users' images are passed on (the served model must be a vision model; one
    that is not answers with an error, reported as a backend failure)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    api_key: str = ""
    model: str = "default"
    timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    images: bool = True

    @classmethod
    def from_mapping(cls, options: Mapping[str, object]) -> OpenAiLlmOptions:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown openai LLM options: {', '.join(unknown)}")
        default = cls()
        return cls(
            base_url=_option(options, "base_url", str, default.base_url),
            api_key=_option(options, "api_key", str, default.api_key),
            model=_option(options, "model", str, default.model),
            timeout_s=float(_option(options, "timeout_s", (int, float), default.timeout_s)),
            connect_timeout_s=float(
                _option(options, "connect_timeout_s", (int, float), default.connect_timeout_s)
            ),
            images=_option(options, "images", bool, default.images),
        )


def load(options: Mapping[str, object] | None = None) -> OpenAiLlm:
    """Build the backend; nothing is contacted until the first `complete()`."""
    return OpenAiLlm(OpenAiLlmOptions.from_mapping(options or {}))


def chat_messages(history: Sequence[Message], instructions: str) -> list[dict[str, Any]]:
    """The `messages` array of a request: the system prompt, then the history in order."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": instructions or DEFAULT_INSTRUCTIONS}]
    for message in history:
        text = message.text
        if message.role == "assistant" and message.interrupted:
            text = f"{text.rstrip()}{INTERRUPTED_MARK}"
        if message.role == "tool":
            messages.append({"role": "tool", "tool_call_id": message.tool_call_id or "", "content": text})
        elif message.tool_calls:
            messages.append(
                {
                    "role": "assistant",
                    "content": text or None,
                    "tool_calls": [
                        {
                            "id": call.call_id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": call.arguments_json},
                        }
                        for call in message.tool_calls
                    ],
                }
            )
        elif message.images:  # a vision model's content parts: the text, then each image
            parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
            parts += [
                {"type": "image_url", "image_url": {"url": image.data_url, "detail": image.detail}}
                for image in message.images
            ]
            messages.append({"role": message.role, "content": parts})
        else:
            messages.append({"role": message.role, "content": text})
    return messages


def chat_tools(specs: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    """The `tools` array of a request."""
    return [
        {
            "type": "function",
            "function": {"name": s.name, "description": s.description, "parameters": dict(s.parameters)},
        }
        for s in specs
    ]


class OpenAiLlm:
    """`LlmBackend` over HTTP; one pooled `httpx.AsyncClient` shared by all sessions."""

    def __init__(self, options: OpenAiLlmOptions) -> None:
        self.options = options
        self.accepts_images = options.images
        headers = {"Accept": "text/event-stream"}
        if options.api_key:
            headers["Authorization"] = f"Bearer {options.api_key}"
        self._url = options.base_url.rstrip("/") + "/chat/completions"
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(options.timeout_s, connect=options.connect_timeout_s),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def complete(
        self, history: Sequence[Message], options: SessionOptions
    ) -> AsyncGenerator[str | ToolCallRequest, None]:
        """Stream the assistant's next message; pieces are non-empty strings, then any tool
        calls. Closing the generator early (`aclose`, cancel) closes the HTTP response."""
        body: dict[str, Any] = {
            "model": self.options.model,
            "messages": chat_messages(history, options.instructions),
            "stream": True,
            "temperature": options.temperature,
        }
        if options.max_output_tokens is not None:
            body["max_tokens"] = options.max_output_tokens
        specs = options.tools.specs() if options.tools is not None else ()
        if specs:
            assert options.tools is not None
            body["tools"] = chat_tools(specs)
            choice = options.tools.choice
            body["tool_choice"] = (
                {"type": "function", "function": {"name": choice.name}}
                if isinstance(choice, ForcedTool)
                else choice
            )
        try:
            async with self._client.stream("POST", self._url, json=body) as response:
                if response.status_code != 200:
                    raise await self._status_error(response)
                async for piece in _stream_pieces(response):
                    yield piece
        except httpx.ConnectTimeout as exc:
            raise BackendError(
                f"timed out connecting to {self._url} after {self.options.connect_timeout_s} s",
                retryable=True,
            ) from exc
        except httpx.ConnectError as exc:
            raise BackendError(f"cannot connect to {self._url}: {exc}", retryable=True) from exc
        except httpx.ReadTimeout as exc:
            raise BackendError(
                f"timeout: no data from {self._url} for {self.options.timeout_s} s",
                retryable=True,
            ) from exc
        except httpx.TimeoutException as exc:
            raise BackendError(f"timeout talking to {self._url}: {exc}", retryable=True) from exc
        except httpx.HTTPError as exc:
            # RemoteProtocolError (connection dropped mid-stream), ReadError, ...
            raise BackendError(
                f"stream from {self._url} broke off: {type(exc).__name__}: {exc}",
                retryable=True,
            ) from exc

    async def _status_error(self, response: httpx.Response) -> BackendError:
        raw = (await response.aread()).decode("utf-8", "replace")
        detail = raw
        try:
            error = json.loads(raw)["error"]
            detail = error["message"] if isinstance(error, dict) else str(error)
        except (ValueError, KeyError, TypeError):
            pass
        detail = " ".join(str(detail).split())[:_ERROR_BODY_CHARS]
        return BackendError(
            f"{self._url} answered HTTP {response.status_code}: {detail}",
            retryable=response.status_code in RETRYABLE_STATUS,
        )


class _ToolCallParts:
    """Streamed `delta.tool_calls` fragments, joined by index: the id and name come first,
    the arguments accrete."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def push(self, fragments: object) -> None:
        if not isinstance(fragments, list):
            raise BackendError("malformed chat-completions stream: delta.tool_calls is not a list")
        for fragment in fragments:
            if not isinstance(fragment, dict):
                raise BackendError("malformed chat-completions stream: a tool call is not an object")
            index = fragment.get("index", len(self._calls))
            function = fragment.get("function") or {}
            if not isinstance(index, int) or not isinstance(function, dict):
                raise BackendError(
                    "malformed chat-completions stream: a tool call has a bad index or function"
                )
            call = self._calls.setdefault(index, {"id": None, "name": "", "arguments": []})
            if isinstance(fragment.get("id"), str) and fragment["id"]:
                call["id"] = fragment["id"]
            if isinstance(function.get("name"), str):
                call["name"] += function["name"]
            arguments = function.get("arguments")
            if arguments is not None and not isinstance(arguments, str):
                raise BackendError("malformed chat-completions stream: tool call arguments are not text")
            if arguments:
                call["arguments"].append(arguments)

    def requests(self) -> list[ToolCallRequest]:
        out = []
        for index in sorted(self._calls):
            call = self._calls[index]
            if not call["name"]:
                raise BackendError("malformed chat-completions stream: a tool call has no function name")
            call_id = call["id"] or f"call_{secrets.token_hex(8)}"
            out.append(ToolCallRequest(call_id, call["name"], "".join(call["arguments"])))
        return out


async def _stream_pieces(response: httpx.Response) -> AsyncIterator[str | ToolCallRequest]:
    """The `delta.content` pieces of an SSE chat-completions stream, until `[DONE]`, then the
    tool calls it made."""
    data_lines: list[str] = []
    finished = False
    calls = _ToolCallParts()
    done = False
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            data_lines.append(line[5:].removeprefix(" "))
            continue
        if line or not data_lines:
            continue  # comments (":"), "event:"/"id:" fields, keep-alive blank lines
        data, data_lines = "\n".join(data_lines), []
        if data.strip() == "[DONE]":
            done = True
            break
        piece, is_final = _parse_chunk(data, calls)
        finished = finished or is_final
        if piece:
            yield piece
    if data_lines and not done:  # a last event without its blank line
        data = "\n".join(data_lines)
        if data.strip() == "[DONE]":
            done = True
        else:
            piece, is_final = _parse_chunk(data, calls)
            finished = finished or is_final
            if piece:
                yield piece
    if not (done or finished):
        raise BackendError("chat-completions stream ended before [DONE] or a finish_reason", retryable=True)
    for call in calls.requests():
        yield call


def _parse_chunk(data: str, calls: _ToolCallParts) -> tuple[str, bool]:
    """(content piece, whether a choice finished) of one `chat.completion.chunk`; tool call
    fragments go to `calls`."""
    try:
        chunk = json.loads(data)
    except ValueError as exc:
        raise BackendError("malformed chat-completions stream: chunk is not JSON") from exc
    if not isinstance(chunk, dict):
        raise BackendError("malformed chat-completions stream: chunk is not an object")
    if "error" in chunk:
        error = chunk["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
        raise BackendError(f"chat-completions stream reported an error: {message}")
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        raise BackendError("malformed chat-completions stream: chunk without choices")
    if not choices:
        return "", False  # e.g. a trailing usage-only chunk
    choice = choices[0]
    if not isinstance(choice, dict):
        raise BackendError("malformed chat-completions stream: choice is not an object")
    delta = choice.get("delta") or {}
    content = delta.get("content") if isinstance(delta, dict) else None
    if content is not None and not isinstance(content, str):
        raise BackendError("malformed chat-completions stream: delta.content is not text")
    if isinstance(delta, dict) and delta.get("tool_calls") is not None:
        calls.push(delta["tool_calls"])
    return content or "", choice.get("finish_reason") is not None


def _option(options: Mapping[str, object], name: str, kind: Any, default: Any) -> Any:
    value = options.get(name, default)
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"openai LLM option {name!r} must be true or false: {value!r}")
        return value
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"openai LLM option {name!r} has the wrong type: {value!r}")
    return value
