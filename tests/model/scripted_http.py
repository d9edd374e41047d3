"""`ScriptedHttpServer`: a small HTTP/1.1 server on 127.0.0.1 (asyncio streams, on the
test's own loop) that records each request and answers as the test's `respond` function
says: a body, a chunked stream, an error status, a stall, or a connection cut mid-body.
For backend tests that need a real socket and a misbehaving server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form_field(self, name: str) -> bytes | None:
        """The value of multipart field `name` (None if absent); enough for the test bodies
        httpx writes."""
        marker = f'name="{name}"'.encode()
        at = self.body.find(marker)
        if at < 0:
            return None
        start = self.body.index(b"\r\n\r\n", at) + 4
        boundary = self.headers["content-type"].split("boundary=")[1].encode()
        end = self.body.index(b"\r\n--" + boundary, start)
        return self.body[start:end]


Respond = Callable[[Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class ScriptedHttpServer:
    respond: Respond
    requests: list[Request] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)
    _server: asyncio.Server | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def aclose(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").strip().split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            headers = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            request = Request(method, path, headers, body)
            self.requests.append(request)
            await self.respond(request, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.disconnected.set()
        finally:
            writer.close()
            self._handlers.discard(task)


@asynccontextmanager
async def scripted_server(respond: Respond) -> AsyncIterator[ScriptedHttpServer]:
    server = ScriptedHttpServer(respond)
    await server.start()
    try:
        yield server
    finally:
        await server.aclose()


# --- answers -------------------------------------------------------------------------------


async def start_chunked(writer: asyncio.StreamWriter, content_type: str) -> None:
    writer.write(
        f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode()
    )
    await writer.drain()


async def send_chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    await writer.drain()


async def end_chunks(writer: asyncio.StreamWriter) -> None:
    writer.write(b"0\r\n\r\n")
    await writer.drain()


def chunked(content_type: str, pieces: Sequence[bytes], delay_s: float = 0.0) -> Respond:
    """200 with `pieces` as the chunks of the body."""

    async def respond(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await start_chunked(writer, content_type)
        for piece in pieces:
            await send_chunk(writer, piece)
            await asyncio.sleep(delay_s)
        await end_chunks(writer)

    return respond


def answer(code: int, body: bytes, content_type: str = "application/json") -> Respond:
    """`code` with a whole body."""

    async def respond(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            f"HTTP/1.1 {code} Scripted\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()

    return respond


def stalling(content_type: str, first: bytes | None) -> Respond:
    """Headers (and `first`, if given), then nothing until the client gives up; with
    `first=None`, not even the headers."""

    async def respond(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if first is not None:
            await start_chunked(writer, content_type)
            await send_chunk(writer, first)
        await reader.read()  # returns b"" once the client closes
        raise ConnectionResetError

    return respond


def cut_off(content_type: str, first: bytes) -> Respond:
    """Headers and one chunk, then the connection closes without the end of the body."""

    async def respond(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await start_chunked(writer, content_type)
        await send_chunk(writer, first)

    return respond


def in_turn(*responders: Respond) -> Respond:
    """The first request gets the first answer, the second the second, ..."""
    calls = 0

    async def respond(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        calls += 1
        await responders[min(calls, len(responders)) - 1](request, reader, writer)

    return respond


def sse(*events: dict[str, Any] | str) -> list[bytes]:
    """Server-sent event chunks: dicts as JSON, strings ("[DONE]") as they are."""
    return [f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode() for e in events]
