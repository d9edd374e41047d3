"""A whole conversation in memory, on a virtual clock: turns, replies and barge-in with exact
timing (tests/streaming/virtual_time.py, memory_port.py; fake models, named as such).

These were websocket tests whose timing bounds had to allow for a busy machine; here the
clock only moves when the conversation waits, so the bounds are the design's own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest

from server.audio import PcmFrame
from server.model.fakes import FakeAsr, FakeLlm, tone
from server.streaming.commands import CancelResponse, CommitAudio, CreateResponse, TruncateItem, UpdateSession
from server.streaming.conversation import Conversation
from server.streaming.outputs import (
    Failed,
    InputCommitted,
    ItemTruncated,
    ResponseAudio,
    ResponseEnded,
    ResponseStarted,
    SessionCreated,
    SpeechStarted,
    SpeechStopped,
)
from server.streaming.session_config import ConversationOptions
from tests.streaming.memory_port import MemoryPort, caller_conversation
from tests.streaming.virtual_time import run_virtual

LONG_REPLY = (
    "Your order left our warehouse this morning. It should arrive on Thursday. "
    "You will get a text message with the tracking link. Is there anything else?"
)
OPTIONS = ConversationOptions()  # 300 ms of silence ends a turn; 250 ms of voice interrupts


def converse(
    script: Callable[[MemoryPort, Conversation], Awaitable[None]],
    asr: FakeAsr | None = None,
    llm: FakeLlm | None = None,
    options: ConversationOptions = OPTIONS,
) -> MemoryPort:
    """Run `script` against a fresh conversation on the virtual clock; returns the port."""

    async def main() -> MemoryPort:
        port = MemoryPort()
        conversation = caller_conversation(port, asr, llm, options=options)
        running = asyncio.create_task(conversation.run())
        await asyncio.sleep(0)
        try:
            await script(port, conversation)
        finally:
            port.hang_up()
            await asyncio.wait_for(running, 5)
        return port

    return run_virtual(main)


def silence(ms: int) -> PcmFrame:
    return PcmFrame.silence(ms, 24_000)


def test_a_turn_ends_after_the_configured_silence_and_the_reply_starts_at_once() -> None:
    async def script(port: MemoryPort, _: Conversation) -> None:
        start = asyncio.get_running_loop().time()
        await port.stream(silence(200))
        await port.stream(tone(600))
        speech_end = asyncio.get_running_loop().time() - start
        first_audio = await port.stream_until(ResponseAudio)
        assert isinstance(port.sent[0].output, SessionCreated)
        started = port.all(SpeechStarted)
        stopped = port.all(SpeechStopped)
        assert [s.audio_start_ms for s in started] == [200]
        assert [s.audio_end_ms for s in stopped] == [800]
        # the reply's first audio leaves with the frame that completes the silence: the
        # gateway itself adds nothing on the conversation's clock
        waited_ms = (first_audio.at_s - start - speech_end) * 1000
        assert OPTIONS.turn.silence_duration_ms <= waited_ms <= OPTIONS.turn.silence_duration_ms + 20

    converse(script, FakeAsr(["where is my order"]), FakeLlm(["It ships today."]))


def test_barge_in_cancels_and_truncates_to_heard_audio() -> None:
    llm = FakeLlm([LONG_REPLY, "Okay."])

    async def script(port: MemoryPort, _: Conversation) -> None:
        loop = asyncio.get_running_loop()
        await port.stream(tone(600))
        first = await port.stream_until(ResponseAudio)
        assert isinstance(first.output, ResponseAudio)
        response_id = first.output.response_id
        await port.stream(silence(600))
        interrupted_at_s = loop.time()
        await port.stream(tone(600))
        await port.stream(silence(600))

        cancelled = await port.stream_until(ResponseEnded)
        ended = cancelled.output
        assert isinstance(ended, ResponseEnded)
        assert (ended.status, ended.reason) == ("cancelled", "turn_detected")
        # not one stale chunk of the cancelled response after it ended
        after = port.sent[port.index(cancelled) :]
        assert [
            s for s in after if isinstance(s.output, ResponseAudio) and s.output.response_id == response_id
        ] == []

        (truncated,) = port.all(ItemTruncated)
        sent_ms = sum(a.duration_ms for a in port.all(ResponseAudio) if a.response_id == response_id)
        played_ms = (interrupted_at_s - first.at_s) * 1000
        barge_in_ms = OPTIONS.turn.barge_in_min_ms
        # what the caller heard: the reply played until the interruption was confirmed
        # (barge_in_min_ms of voice); the client held at most the playout lead beyond that
        assert played_ms + barge_in_ms - 40 <= truncated.audio_end_ms <= played_ms + barge_in_ms + 40
        assert sent_ms - OPTIONS.playout.lead_ms - 40 <= truncated.audio_end_ms <= sent_ms

        second = await port.stream_until(ResponseEnded, after=port.index(cancelled) + 1)
        assert isinstance(second.output, ResponseEnded) and second.output.status == "completed"

    converse(script, FakeAsr(["where is my order", "stop please"]), llm)
    history = llm.calls[1]
    assistant = [m for m in history if m.role == "assistant"]
    assert len(assistant) == 1 and assistant[0].interrupted
    assert 0 < len(assistant[0].text) < len(LONG_REPLY) / 2
    assert LONG_REPLY.startswith(assistant[0].text)
    assert [m.text for m in history if m.role == "user"] == ["where is my order", "stop please"]


def test_cough_during_reply_does_not_interrupt() -> None:
    async def script(port: MemoryPort, _: Conversation) -> None:
        await port.stream(tone(600))
        await port.stream_until(ResponseAudio)
        await port.stream(tone(140))  # a cough: shorter than barge_in_min_ms
        done = await port.stream_until(ResponseEnded)
        assert isinstance(done.output, ResponseEnded) and done.output.status == "completed"
        assert len(port.all(SpeechStarted)) == 1

    converse(script, FakeAsr(["hi"]), FakeLlm(["Hello, how can I help you today?"]))


def test_client_truncate_overrides_estimate() -> None:
    async def script(port: MemoryPort, conversation: Conversation) -> None:
        manual = conversation.config.copy()
        manual.turn_detection = None
        port.push(UpdateSession(manual))
        await port.stream(tone(400))
        port.push(CommitAudio())
        port.push(CreateResponse())
        first = await port.stream_until(ResponseAudio)
        assert isinstance(first.output, ResponseAudio)
        await asyncio.sleep(0.5)
        port.push(CancelResponse())
        done = await port.stream_until(ResponseEnded)
        assert isinstance(done.output, ResponseEnded) and done.output.reason == "client_cancelled"
        server_cut = await port.stream_until(ItemTruncated)  # the server's own estimate first
        port.push(TruncateItem(first.output.item_id, 0, 100))
        client_cut = await port.stream_until(ItemTruncated, after=port.index(server_cut) + 1)
        assert client_cut.output == ItemTruncated(first.output.item_id, 100)

    converse(script, FakeAsr(["hi"]), FakeLlm([LONG_REPLY]))


def test_a_client_commit_that_crosses_the_vads_commit_finds_the_buffer_empty() -> None:
    """A client ends its turn with a commit (the web client's Stop) just as the VAD ended it:
    the commit is refused as empty, not filled with the turn's audio again (a second turn)."""

    async def script(port: MemoryPort, _: Conversation) -> None:
        await port.stream(tone(600))
        committed = await port.stream_until(InputCommitted)
        port.push(CommitAudio())
        await port.stream(silence(200))
        refused = port.first(Failed, after=port.index(committed))
        assert refused is not None and isinstance(refused.output, Failed)
        assert refused.output.code == "input_audio_buffer_commit_empty"
        assert len(port.all(InputCommitted)) == 1
        # a commit after new speech the VAD missed still takes that speech
        await port.stream(silence(1000))
        port.push(CommitAudio())
        await port.stream(silence(100))
        assert len(port.all(InputCommitted)) == 2

    converse(script, FakeAsr(["hi", "again"]), FakeLlm(["Hello."]))


GREETING = "Thank you for calling. How can I help you today?"


def test_a_greeting_is_the_first_reply_spoken_as_it_is_before_the_caller_speaks() -> None:
    llm = FakeLlm(["Your order ships today."])
    options = replace(OPTIONS, greeting=GREETING)

    async def script(port: MemoryPort, _: Conversation) -> None:
        greeted = await port.wait_until(ResponseEnded)  # the caller has not said a word
        assert isinstance(greeted.output, ResponseEnded)
        assert (greeted.output.status, greeted.output.transcript) == ("completed", GREETING)
        assert port.all(ResponseAudio)
        await port.stream(tone(600))
        answered = await port.stream_until(ResponseEnded, after=port.index(greeted) + 1)
        assert isinstance(answered.output, ResponseEnded) and answered.output.status == "completed"

    port = converse(script, FakeAsr(["where is my order"]), llm, options)
    assert isinstance(port.sent[0].output, SessionCreated)
    # the language model was not asked for the greeting; it reads it in the history
    assert [[(m.role, m.text) for m in call] for call in llm.calls] == [
        [("assistant", GREETING), ("user", "where is my order")]
    ]


def test_a_caller_who_talks_over_the_greeting_interrupts_it() -> None:
    llm = FakeLlm(["Sure."])

    async def script(port: MemoryPort, _: Conversation) -> None:
        await port.wait_until(ResponseAudio)
        await port.stream(silence(300))
        await port.stream(tone(600))
        ended = await port.stream_until(ResponseEnded)
        assert isinstance(ended.output, ResponseEnded)
        assert (ended.output.status, ended.output.reason) == ("cancelled", "turn_detected")
        await port.stream_until(ResponseEnded, after=port.index(ended) + 1)

    converse(script, FakeAsr(["i need a refund"]), llm, replace(OPTIONS, greeting=GREETING))
    (history,) = llm.calls
    assert history[0].role == "assistant" and history[0].interrupted  # what the caller heard of it
    assert GREETING.startswith(history[0].text) and history[0].text != GREETING
    assert (history[1].role, history[1].text) == ("user", "i need a refund")


@pytest.mark.parametrize(("greeting", "session_type"), [(None, "realtime"), (GREETING, "transcription")])
def test_without_a_greeting_or_in_a_transcription_session_nothing_is_said_first(
    greeting: str | None, session_type: str
) -> None:
    options = replace(OPTIONS, greeting=greeting)

    async def main() -> MemoryPort:
        config = options.session_config("sess_test")
        config.session_type = session_type  # captions only: never a reply
        port = MemoryPort(UpdateSession(config))
        conversation = caller_conversation(port, FakeAsr(["hello"]), FakeLlm(["Hi."]), options=options)
        running = asyncio.create_task(conversation.run())
        try:
            with contextlib.suppress(TimeoutError):
                await port.wait_until(ResponseStarted, limit_s=2.0)
        finally:
            port.hang_up()
            await asyncio.wait_for(running, 5)
        return port

    assert run_virtual(main).all(ResponseStarted) == []
