"""The OpenAI-compatible backend against a real HTTP server on 127.0.0.1.

`ScriptedHttpServer` (tests/model/scripted_http.py) is a small HTTP/1.1 server (asyncio streams, on the test's own loop) that records
each request and answers `/v1/chat/completions` the way the scenario asks: a chunked
`text/event-stream`, an error status, a stream that stalls, or one that breaks off.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from typing import Any

import pytest

from server.errors import BackendError
from server.model.backends.openai_llm import (
    DEFAULT_INSTRUCTIONS,
    OpenAiLlm,
    chat_messages,
    load,
)
from server.model.base import ImageInput, Message, SessionOptions, ToolCallRequest
from server.model.tool_calls import ForcedTool, ToolChoice, ToolSpec
from server.tools import SessionTools, ToolBox
from tests.model.scripted_http import Request, Respond, scripted_server


@asynccontextmanager
async def backend(server_url: str, **options: object) -> AsyncIterator[OpenAiLlm]:
    llm = load({"base_url": server_url, "model": "test-model", **options})
    try:
        yield llm
    finally:
        await llm.aclose()


# --- what the server answers ---------------------------------------------------------------


def chunk_event(content: str | None, finish_reason: str | None = None) -> str:
    delta: dict[str, str] = {} if content is None else {"content": content}
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "test-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    return f"data: {json.dumps(chunk)}\n\n"


async def start_event_stream(writer: asyncio.StreamWriter) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()


async def send_chunk(writer: asyncio.StreamWriter, text: str) -> None:
    data = text.encode()
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    await writer.drain()


async def end_chunks(writer: asyncio.StreamWriter) -> None:
    writer.write(b"0\r\n\r\n")
    await writer.drain()


def streaming(events: Sequence[str], delay_s: float = 0.0) -> Respond:
    async def respond(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await start_event_stream(writer)
        for event in events:
            await send_chunk(writer, event)
            await asyncio.sleep(delay_s)
        await end_chunks(writer)

    return respond


def status(code: int, body: str) -> Respond:
    async def respond(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = body.encode()
        writer.write(
            f"HTTP/1.1 {code} Oops\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            + data
        )
        await writer.drain()

    return respond


def stalling(first_event: str) -> Respond:
    async def respond(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await start_event_stream(writer)
        await send_chunk(writer, first_event)
        await reader.read()  # returns b"" once the client gives up and closes
        raise ConnectionResetError

    return respond


def endless(delay_s: float) -> Respond:
    async def respond(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await start_event_stream(writer)
        for n in range(10_000):
            await send_chunk(writer, chunk_event(f" word{n}"))
            await asyncio.sleep(delay_s)

    return respond


async def collect(llm: OpenAiLlm, history: Sequence[Message], instructions: str = "") -> list[str]:
    options = SessionOptions(instructions=instructions, temperature=0.2, max_output_tokens=40)
    pieces = [piece async for piece in llm.complete(history, options)]
    texts = [piece for piece in pieces if isinstance(piece, str)]
    assert texts == pieces, "no tool calls expected here"
    return texts


HISTORY = [
    Message("user", "Hi, where is my order?"),
    Message("assistant", "It shipped yesterday and should", interrupted=True),
    Message("user", "Sorry, when will it arrive?"),
]


# --- tests ---------------------------------------------------------------------------------


async def test_streams_pieces_and_sends_instructions_and_history() -> None:
    events = [
        chunk_event(None),  # role-only first chunk, as vLLM and OpenAI send
        chunk_event("It should"),
        chunk_event(" arrive on"),
        chunk_event(" Friday."),
        chunk_event(None, finish_reason="stop"),
        "data: [DONE]\n\n",
    ]
    async with scripted_server(streaming(events)) as server:
        async with backend(server.base_url, api_key="sk-test") as llm:
            pieces = await collect(llm, HISTORY, instructions="You are Ada from Acme.")

    assert pieces == ["It should", " arrive on", " Friday."]
    [request] = server.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.json()["model"] == "test-model"
    assert request.json()["stream"] is True
    assert request.json()["max_tokens"] == 40
    assert request.json()["temperature"] == pytest.approx(0.2)
    assert request.json()["messages"] == [
        {"role": "system", "content": "You are Ada from Acme."},
        {"role": "user", "content": "Hi, where is my order?"},
        {"role": "assistant", "content": "It shipped yesterday and should—"},
        {"role": "user", "content": "Sorry, when will it arrive?"},
    ]


async def test_empty_instructions_send_the_default_system_prompt() -> None:
    events = [chunk_event("Hello."), "data: [DONE]\n\n"]
    async with scripted_server(streaming(events)) as server:
        async with backend(server.base_url) as llm:
            assert await collect(llm, HISTORY[:1]) == ["Hello."]
    [request] = server.requests
    assert request.json()["messages"][0] == {"role": "system", "content": DEFAULT_INSTRUCTIONS}
    assert "authorization" not in request.headers


async def test_http_500_is_a_retryable_backend_error_with_the_servers_message() -> None:
    body = json.dumps({"error": {"message": "model is loading", "type": "server_error"}})
    async with scripted_server(status(500, body)) as server:
        async with backend(server.base_url) as llm:
            with pytest.raises(BackendError, match=r"HTTP 500: model is loading") as caught:
                await collect(llm, HISTORY)
    assert caught.value.retryable


async def test_http_401_is_not_retryable() -> None:
    async with scripted_server(status(401, '{"error": "invalid api key"}')) as server:
        async with backend(server.base_url) as llm:
            with pytest.raises(BackendError, match=r"HTTP 401: invalid api key") as caught:
                await collect(llm, HISTORY)
    assert not caught.value.retryable


async def test_connection_refused_is_a_retryable_backend_error() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago and has no listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with backend(f"http://127.0.0.1:{port}/v1") as llm:
        with pytest.raises(BackendError, match="cannot connect") as caught:
            await collect(llm, HISTORY)
    assert caught.value.retryable


async def test_a_stalled_stream_times_out() -> None:
    async with scripted_server(stalling(chunk_event("Let me"))) as server:
        async with backend(server.base_url, timeout_s=0.3) as llm:
            pieces: list[str] = []
            started = time.monotonic()
            with pytest.raises(BackendError, match="timeout") as caught:
                async for piece in llm.complete(HISTORY, SessionOptions()):
                    assert isinstance(piece, str)
                    pieces.append(piece)
            elapsed_s = time.monotonic() - started
        await asyncio.wait_for(server.disconnected.wait(), timeout=2.0)
    assert pieces == ["Let me"]
    assert caught.value.retryable
    assert 0.3 <= elapsed_s < 2.0


async def test_a_stream_that_breaks_off_is_retryable() -> None:
    async with scripted_server(streaming([chunk_event("It should")])) as server:
        async with backend(server.base_url) as llm:
            with pytest.raises(BackendError, match="ended before") as caught:
                await collect(llm, HISTORY)
    assert caught.value.retryable


async def test_a_malformed_chunk_is_not_retryable() -> None:
    events = [chunk_event("Sure"), "data: {not json\n\n", "data: [DONE]\n\n"]
    async with scripted_server(streaming(events)) as server:
        async with backend(server.base_url) as llm:
            with pytest.raises(BackendError, match="malformed") as caught:
                await collect(llm, HISTORY)
    assert not caught.value.retryable


async def test_an_error_event_in_the_stream_raises() -> None:
    events = [chunk_event("Sure"), 'data: {"error": {"message": "context overflow"}}\n\n']
    async with scripted_server(streaming(events)) as server:
        async with backend(server.base_url) as llm:
            with pytest.raises(BackendError, match="context overflow"):
                await collect(llm, HISTORY)


async def test_a_stream_ending_with_finish_reason_but_no_done_is_accepted() -> None:
    events = [chunk_event("Bye"), chunk_event(None, finish_reason="stop")]
    async with scripted_server(streaming(events)) as server:
        async with backend(server.base_url) as llm:
            assert await collect(llm, HISTORY) == ["Bye"]


async def test_leaving_early_closes_the_connection() -> None:
    async with scripted_server(endless(delay_s=0.01)) as server:
        async with backend(server.base_url) as llm:
            async with aclosing(llm.complete(HISTORY, SessionOptions())) as pieces:
                first = await anext(pieces)
            # The server learns of it at its next write: generation stops there.
            await asyncio.wait_for(server.disconnected.wait(), timeout=2.0)
    assert first == " word0"


def test_chat_messages_mark_only_interrupted_assistant_replies() -> None:
    history = [
        Message("system", "The caller is on the gold plan."),
        Message("assistant", "Hello, how can I help?"),
        Message("assistant", "Your refund was ", interrupted=True),
    ]
    assert chat_messages(history, "Be brief.") == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "The caller is on the gold plan."},
        {"role": "assistant", "content": "Hello, how can I help?"},
        {"role": "assistant", "content": "Your refund was—"},
    ]


def test_unknown_or_mistyped_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown"):
        load({"base_uri": "http://x"})
    with pytest.raises(ValueError, match="timeout_s"):
        load({"timeout_s": "soon"})


# --- tools ---------------------------------------------------------------------------------


def tool_call_event(fragments: list[dict[str, Any]], finish_reason: str | None = None) -> str:
    """A chunk carrying `delta.tool_calls` fragments, as the OpenAI API streams them: the first
    fragment of a call has its id, type and name with empty arguments; later ones only
    `index` and an arguments piece."""
    chunk = {
        "id": "chatcmpl-2",
        "object": "chat.completion.chunk",
        "model": "test-model",
        "choices": [{"index": 0, "delta": {"tool_calls": fragments}, "finish_reason": finish_reason}],
    }
    return f"data: {json.dumps(chunk)}\n\n"


def first_fragment(index: int, call_id: str, name: str) -> dict[str, Any]:
    return {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}


def arguments_fragment(index: int, piece: str) -> dict[str, Any]:
    return {"index": index, "function": {"arguments": piece}}


def session_tools(*specs: ToolSpec, choice: ToolChoice = "auto") -> SessionTools:
    return SessionTools(ToolBox(), "sess_test", lambda event: None, specs, choice)


ORDER_TOOL = ToolSpec(
    "order_status",
    "Look up an order.",
    {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
    client_side=True,
)


async def test_tools_are_offered_and_streamed_tool_calls_are_joined_by_index() -> None:
    role_chunk = {
        "id": "chatcmpl-2",
        "object": "chat.completion.chunk",
        "choices": [
            {
                "index": 0,
                "delta": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [first_fragment(0, "call_a", "order_status")],
                },
                "finish_reason": None,
            }
        ],
    }
    events = [
        chunk_event("Let me check."),
        f"data: {json.dumps(role_chunk)}\n\n",
        tool_call_event([arguments_fragment(0, '{"order')]),
        tool_call_event([arguments_fragment(0, '_id": "A1"}')]),
        tool_call_event([first_fragment(1, "call_b", "order_status")]),
        tool_call_event([arguments_fragment(1, '{"order_id": "B2"}')]),
        tool_call_event([], finish_reason="tool_calls"),
        "data: [DONE]\n\n",
    ]
    async with scripted_server(streaming(events)) as server:
        async with backend(server.base_url) as llm:
            options = SessionOptions(tools=session_tools(ORDER_TOOL, choice="required"))
            pieces = [piece async for piece in llm.complete(HISTORY, options)]
    assert pieces == [
        "Let me check.",
        ToolCallRequest("call_a", "order_status", '{"order_id": "A1"}'),
        ToolCallRequest("call_b", "order_status", '{"order_id": "B2"}'),
    ]
    [request] = server.requests
    assert request.json()["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "order_status",
                "description": "Look up an order.",
                "parameters": ORDER_TOOL.parameters,
            },
        }
    ]
    assert request.json()["tool_choice"] == "required"


async def test_no_tools_key_without_tools() -> None:
    events = [chunk_event("Hi."), "data: [DONE]\n\n"]
    async with scripted_server(streaming(events)) as server:
        async with backend(server.base_url) as llm:
            assert await collect(llm, HISTORY) == ["Hi."]
    assert "tools" not in server.requests[0].json()
    assert "tool_choice" not in server.requests[0].json()


async def test_a_tool_call_without_a_name_is_a_malformed_stream() -> None:
    events = [tool_call_event([arguments_fragment(0, "{}")], finish_reason="tool_calls"), "data: [DONE]\n\n"]
    async with scripted_server(streaming(events)) as server:
        async with backend(server.base_url) as llm:
            with pytest.raises(BackendError, match="no function name") as caught:
                await collect(llm, HISTORY)
    assert not caught.value.retryable


async def test_tool_call_arguments_that_are_not_text_are_a_malformed_stream() -> None:
    bad = {"index": 0, "id": "c", "function": {"name": "x", "arguments": {"order_id": 1}}}
    events = [tool_call_event([bad], finish_reason="tool_calls"), "data: [DONE]\n\n"]
    async with scripted_server(streaming(events)) as server:
        async with backend(server.base_url) as llm:
            with pytest.raises(BackendError, match="not text"):
                await collect(llm, HISTORY)


def test_history_with_tool_calls_and_results_is_sent_in_the_chat_shape() -> None:
    call = ToolCallRequest("call_a", "order_status", '{"order_id": "A1"}')
    history = [
        Message("user", "Where is A1?"),
        Message("assistant", "", tool_calls=(call,)),
        Message("tool", '{"status": "shipped"}', tool_call_id="call_a"),
        Message("assistant", "It shipped."),
    ]
    assert chat_messages(history, "Be brief.")[1:] == [
        {"role": "user", "content": "Where is A1?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "order_status", "arguments": '{"order_id": "A1"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": '{"status": "shipped"}'},
        {"role": "assistant", "content": "It shipped."},
    ]


async def test_a_forced_function_is_sent_in_chat_completions_form() -> None:
    events = [tool_call_event([first_fragment(0, "call_a", "order_status")]), "data: [DONE]\n\n"]
    async with scripted_server(streaming(events)) as server:
        async with backend(server.base_url) as llm:
            options = SessionOptions(tools=session_tools(ORDER_TOOL, choice=ForcedTool("order_status")))
            [piece async for piece in llm.complete(HISTORY, options)]
    assert server.requests[0].json()["tool_choice"] == {
        "type": "function",
        "function": {"name": "order_status"},
    }


async def test_images_go_to_a_vision_model_as_content_parts_over_the_wire() -> None:
    png = ImageInput("image/png", b"\x89PNG\r\n\x1a\nrest", "low")
    history = [Message("user", "What is this?", images=(png,)), Message("user", "", images=(png,))]
    events = [chunk_event("A chart."), chunk_event(None, finish_reason="stop"), "data: [DONE]\n\n"]
    async with scripted_server(streaming(events)) as server:
        async with backend(server.base_url) as llm:
            assert llm.accepts_images
            assert await collect(llm, history) == ["A chart."]
    image_part = {"type": "image_url", "image_url": {"url": png.data_url, "detail": "low"}}
    assert server.requests[0].json()["messages"][1:] == [
        {"role": "user", "content": [{"type": "text", "text": "What is this?"}, image_part]},
        {"role": "user", "content": [image_part]},
    ]


def test_images_can_be_turned_off_for_a_model_that_cannot_see() -> None:
    assert load({"images": False}).accepts_images is False
    with pytest.raises(ValueError, match="must be true or false"):
        load({"images": "yes"})
