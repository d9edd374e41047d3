"""A conversation's client in memory: commands queued by the test, outputs kept with their time.

`MemoryPort` is a `ClientPort` with no protocol and no socket, so a `Conversation` can be driven
by a test directly, on the virtual clock of virtual_time.py. `caller_conversation()` builds one
with the fake models (named as such) and the energy VAD, the clock taken from the running loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TypeVar

from server.audio import PcmFrame
from server.events import EventHandler
from server.metrics import Metrics
from server.model.cascade import CascadeModel
from server.model.fakes import EnergyClassifierFactory, FakeAsr, FakeLlm, FakeTts
from server.streaming.commands import AppendAudio, Command, UpdateSession
from server.streaming.conversation import Conversation
from server.streaming.outputs import Output
from server.streaming.port import SessionView, TransportClosed
from server.streaming.session_config import ConversationOptions

OutputT = TypeVar("OutputT", bound=Output)


@dataclass(frozen=True, slots=True)
class Sent:
    at_s: float  # the loop's clock when the conversation sent it
    output: Output


class MemoryPort:
    def __init__(self, opening: UpdateSession | None = None) -> None:
        self._commands: asyncio.Queue[Command | None] = asyncio.Queue()
        self._opening = opening
        self._new = asyncio.Event()
        self.session: SessionView | None = None
        self.sent: list[Sent] = []

    # --- ClientPort ----------------------------------------------------------------------------

    def attach(self, session: SessionView) -> None:
        self.session = session

    def opening_settings(self) -> UpdateSession | None:
        return self._opening

    async def receive(self) -> Command:
        command = await self._commands.get()
        if command is None:
            raise TransportClosed
        return command

    async def send(self, output: Output) -> None:
        self.sent.append(Sent(asyncio.get_running_loop().time(), output))
        self._new.set()

    # --- the test's side -----------------------------------------------------------------------

    def push(self, command: Command) -> None:
        self._commands.put_nowait(command)

    def hang_up(self) -> None:
        self._commands.put_nowait(None)

    async def stream(self, frame: PcmFrame, chunk_ms: int = 20) -> None:
        """Caller audio (pcm16 at the session's input rate) at real time, in chunks, each sent
        when it has been captured, as a microphone does."""
        step = frame.sample_rate_hz * chunk_ms // 1000
        for start in range(0, frame.sample_count, step):
            await asyncio.sleep(chunk_ms / 1000)
            self.push(
                AppendAudio(PcmFrame(frame.samples[start : start + step], frame.sample_rate_hz).to_bytes())
            )

    async def stream_until(self, kind: type[Output], *, after: int = 0, limit_s: float = 30.0) -> Sent:
        """Stream silence at real time until an output of `kind` (at index >= after) is sent."""
        silence = PcmFrame.silence(20, 24_000)
        deadline = asyncio.get_running_loop().time() + limit_s
        while (found := self.first(kind, after)) is None:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no {kind.__name__} within {limit_s} s")
            await self.stream(silence)
        return found

    async def wait_until(self, kind: type[Output], *, after: int = 0, limit_s: float = 30.0) -> Sent:
        """Send nothing until an output of `kind` (at index >= after) is sent: a muted microphone."""
        async with asyncio.timeout(limit_s):
            while (found := self.first(kind, after)) is None:
                self._new.clear()
                await self._new.wait()
        return found

    def first(self, kind: type[Output], after: int = 0) -> Sent | None:
        return next((s for s in self.sent[after:] if isinstance(s.output, kind)), None)

    def all(self, kind: type[OutputT]) -> list[OutputT]:
        return [s.output for s in self.sent if isinstance(s.output, kind)]

    def index(self, sent: Sent) -> int:
        return self.sent.index(sent)


def caller_conversation(
    port: MemoryPort,
    asr: FakeAsr | None = None,
    llm: FakeLlm | None = None,
    tts: FakeTts | None = None,
    options: ConversationOptions | None = None,
    on_event: EventHandler | None = None,
) -> Conversation:
    """A conversation with the fake models and the energy VAD, on the running loop's clock."""
    model = CascadeModel(asr or FakeAsr(), llm or FakeLlm(), tts or FakeTts())
    return Conversation(
        port,
        model,
        EnergyClassifierFactory(),
        options or ConversationOptions(),
        Metrics(),
        clock=asyncio.get_running_loop().time,
        on_event=on_event,
    )
