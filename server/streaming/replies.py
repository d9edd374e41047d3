"""Replies: a conversation's responses, from start (or speculative preparation) to the end.

Each reply's state is a `Reply` machine (reply.py); this module carries out what the machines
decide: it runs the model's reply in a task, sends its outputs through the conversation, feeds
its audio to the playout buffer, cuts it on barge-in and truncates the history to what the
caller heard. Client-side function calls made in a reply are tracked here until the client
answers them.

Barge-in (`cancel`): the reply stops its audio (the writer drops any chunk of it), the playout
buffer is cleared (what the client holds is the estimate of what it has not heard), the reply
task is cancelled with a bound, the response ends `cancelled`, and the model's history is cut
to what was heard. A client's `TruncateItem` overrides that estimate.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from server.aio import cancel_and_wait
from server.audio import PcmFrame, StreamResampler
from server.errors import ModelTimeout, ProtocolViolation
from server.events import AgentEvent, AssistantTurn, Interrupted, ToolCalled, Truncated, TurnLatency
from server.ids import new_id
from server.logs import error_fields
from server.metrics import Metrics
from server.model.base import AudioChunk, Message, OmniSession, ResponseOptions, TextDelta, ToolCallRequest
from server.privacy import PrivacyOptions
from server.streaming.commands import AddFunctionCall, AddFunctionOutput, TruncateItem
from server.streaming.outputs import (
    Failed,
    FunctionCall,
    FunctionCallAdded,
    FunctionCallMade,
    FunctionOutputAdded,
    ItemTruncated,
    Output,
    ResponseEnded,
    ResponseStarted,
    ResponseText,
)
from server.streaming.playout import PlayoutBuffer
from server.streaming.reply import Reply
from server.streaming.session_config import SessionConfig
from server.streaming.turns import ReplyFinished, ReplyStarted, TurnTaker

log = logging.getLogger(__name__)

CANCEL_TIMEOUT_S = 1.0
FINISH_PREVIOUS_TIMEOUT_S = 30.0

ActiveReply = Reply[Output, PcmFrame, AgentEvent]
Transcribe = Callable[
    [
        str,
        "asyncio.Task[Exception | None] | None",
        Callable[[Output], Awaitable[None]],
        Callable[[AgentEvent], None],
    ],
    Awaitable[Exception | None],
]

# the reply whose task (or a task it started) is running: a speculative one's tools wait
_RUNNING_REPLY: contextvars.ContextVar[ActiveReply | None] = contextvars.ContextVar(
    "voxgate_reply", default=None
)


def failure_code(exc: Exception) -> str:
    """The `error.code` of a model failure: a hung model, or any other failure."""
    return "model_timeout" if isinstance(exc, ModelTimeout) else "backend_error"


class ReplyHost(Protocol):
    """What replies need of their conversation."""

    config: SessionConfig
    last_item_id: str | None

    @property
    def model_session(self) -> OmniSession: ...

    @property
    def tasks(self) -> asyncio.TaskGroup: ...

    def input_ms(self) -> int: ...

    async def send(self, output: Output) -> None: ...

    def publish(self, event: AgentEvent) -> None: ...

    def remember_item(self, item_id: str, is_it: Callable[[Message], bool]) -> None:
        """Name the newest history message that `is_it` as this item (for deletion)."""
        ...


@dataclass(frozen=True, slots=True)
class _PendingCall:
    """A client-side tool call sent to the client, waiting for its function_call_output."""

    name: str
    arguments_json: str
    sent_s: float


@dataclass(slots=True)
class _ReplyIo:
    """The I/O side of a reply: its task, the events its parts wait on, its function calls."""

    task: asyncio.Task[None] | None = None
    all_sent: asyncio.Event = field(default_factory=asyncio.Event)  # the writer sent its last audio
    released: asyncio.Event = field(default_factory=asyncio.Event)  # it is no longer held
    user_speech_end_s: float | None = None
    first_audio_sent_s: float | None = None
    function_calls: list[FunctionCall] = field(default_factory=list)
    metadata: Mapping[str, str] | None = None  # the client's, echoed in the response's events


class Replies:
    """The replies of one conversation: at most one current, and one being prepared."""

    def __init__(
        self,
        host: ReplyHost,
        playout: PlayoutBuffer,
        playout_wakeup: asyncio.Event,
        turns: TurnTaker,
        metrics: Metrics,
        privacy: PrivacyOptions,
        clock: Callable[[], float],
        transcribe: Transcribe,
    ) -> None:
        self._host = host
        self._playout = playout
        self._playout_wakeup = playout_wakeup
        self._turns = turns
        self._metrics = metrics
        self._privacy = privacy
        self._clock = clock
        self._transcribe = transcribe
        self.current: ActiveReply | None = None
        self.prepared: ActiveReply | None = None
        self._io: dict[int, _ReplyIo] = {}
        self._seq = 0
        self._pending_calls: dict[str, _PendingCall] = {}

    # --- questions -----------------------------------------------------------------------------

    @property
    def is_busy(self) -> bool:
        """A reply is prepared, generating or playing."""
        current = self.current
        return (current is not None and not current.is_finished) or self.prepared is not None

    def io(self, reply: ActiveReply) -> _ReplyIo:
        io = self._io.get(reply.reply_id)
        if io is None:
            io = self._io[reply.reply_id] = _ReplyIo()
            if reply.is_released:
                io.released.set()
        return io

    def sent_audio(self, reply: ActiveReply, duration_ms: float) -> None:
        """The writer sent a chunk of `reply`; its first one after the caller's speech ended
        is the turn's voice-to-voice latency (a histogram, and a TurnLatency event)."""
        reply.sent_audio(duration_ms)
        io = self.io(reply)
        if io.first_audio_sent_s is not None:
            return
        io.first_audio_sent_s = self._clock()
        if io.user_speech_end_s is None:
            return
        latency_s = io.first_audio_sent_s - io.user_speech_end_s
        self._metrics.voice_to_voice.observe(latency_s)
        timings = self._host.model_session.timings
        self._host.publish(
            TurnLatency(
                self._host.config.id,
                reply.item_id,
                latency_s * 1000,
                asr_final_ms=timings.asr_final_ms,
                llm_first_token_ms=timings.llm_first_token_ms,
                tts_first_audio_ms=timings.tts_first_audio_ms,
            )
        )

    def all_sent(self, reply: ActiveReply) -> None:
        self.io(reply).all_sent.set()

    # --- starting --------------------------------------------------------------------------------

    def _new(self, options: ResponseOptions, *, prepared: bool = False) -> ActiveReply:
        self._seq += 1
        reply: ActiveReply = Reply(
            self._seq, new_id("resp"), new_id("item"), options.with_audio, prepared=prepared
        )
        live = {r.reply_id for r in (self.current, self.prepared) if r is not None}
        for old in [rid for rid in self._io if rid not in live]:  # replies that are over
            del self._io[old]
        self.io(reply)
        return reply

    async def start(
        self,
        options: ResponseOptions,
        default_options: ResponseOptions,
        transcription: asyncio.Task[Exception | None] | None,
        speech_end_s: float | None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Start a reply (StartReply, or a client's CreateResponse): adopt the prepared one if
        it was prepared with these options, else begin one after `transcription`. `metadata`
        (a client's) is echoed in the response's events."""
        prepared, self.prepared = self.prepared, None
        if prepared is not None and (options != default_options or metadata is not None):
            await self._discard(prepared)  # a client's response.create asked for another
            prepared = None
        previous = self.current
        if previous is not None and not previous.is_finished:
            # a reply still playing its tail (or one that may not be interrupted) is let finish
            await self._finish_previous(previous)
        reply = prepared or self._new(options)
        self.io(reply).user_speech_end_s = speech_end_s
        self.io(reply).metadata = metadata
        self.current = reply
        self._playout.begin(reply.reply_id, self._host.config.output_format.sample_rate_hz)
        self._turns.receive(ReplyStarted(reply.reply_id), self._host.input_ms())
        if prepared is not None:
            self._metrics.speculations.labels(outcome="adopted").inc()
            await self._adopt(prepared)
            if prepared.is_finished:  # it failed while held: its ReplyFinished went unheard
                self._turns.receive(ReplyFinished(prepared.reply_id), self._host.input_ms())
            return
        self.io(reply).task = self._host.tasks.create_task(
            self._run(reply, options, transcription), name=f"reply-{reply.reply_id}"
        )

    def prepare(
        self, options: ResponseOptions, item_id: str, previous: asyncio.Task[Exception | None] | None
    ) -> None:
        """Finish the transcript and start the reply during the end-of-turn silence, holding
        everything it produces until `start` adopts it."""
        if self.prepared is not None:
            return
        reply = self._new(options, prepared=True)
        reply.checkpoint = self._host.model_session.checkpoint()
        self.prepared = reply
        self.io(reply).task = self._host.tasks.create_task(
            self._run_prepared(reply, options, item_id, previous), name=f"prepared-reply-{reply.reply_id}"
        )

    async def _run_prepared(
        self,
        reply: ActiveReply,
        options: ResponseOptions,
        item_id: str,
        previous: asyncio.Task[Exception | None] | None,
    ) -> None:
        async def hold(output: Output) -> None:
            await self._emit(reply, output)

        def publish(event: AgentEvent) -> None:
            for released in reply.publish(event):  # held until the reply is adopted
                self._host.publish(released)

        failure = await self._transcribe(item_id, previous, hold, publish)
        await self._run(reply, options, None, failure)

    async def abandon_prepared(self) -> bool:
        """The caller went on talking: throw the prepared reply away unheard. Returns whether
        there was one (its turn's audio must then be heard again)."""
        prepared, self.prepared = self.prepared, None
        if prepared is None:
            return False
        await self._discard(prepared)
        return True

    async def _discard(self, prepared: ActiveReply) -> None:
        self._metrics.speculations.labels(outcome="abandoned").inc()
        prepared.discard()
        await cancel_and_wait(self.io(prepared).task, CANCEL_TIMEOUT_S)
        self._host.model_session.rollback(prepared.checkpoint)

    async def _adopt(self, reply: ActiveReply) -> None:
        """Send what a prepared reply held, in order, then let it run free."""
        while held := reply.take_held():  # the reply may hold more while we send: drain to empty
            for output in held:
                await self._host.send(output)
        # no await from here on: nothing can be held after the last look
        adoption = reply.adopt()
        for frame in adoption.audio:
            self._playout.push(frame)
        if adoption.input_done:
            self._playout.end_input()
        for event in adoption.published:
            self._host.publish(event)
        self.io(reply).released.set()
        self._playout_wakeup.set()

    async def _emit(self, reply: ActiveReply, output: Output) -> None:
        for ready in reply.emit(output):
            await self._host.send(ready)

    def _queue_audio(self, reply: ActiveReply, frame: PcmFrame) -> None:
        for ready in reply.queue_audio(frame):
            self._playout.push(ready)
            self._playout_wakeup.set()

    async def _finish_previous(self, previous: ActiveReply) -> None:
        self.resume(previous.reply_id)  # a paused reply could never finish
        task = self.io(previous).task
        if previous.is_generating and task is not None:
            await asyncio.wait({task}, timeout=FINISH_PREVIOUS_TIMEOUT_S)
        if task is not None and not task.done():
            await cancel_and_wait(task, CANCEL_TIMEOUT_S)

    # --- running ---------------------------------------------------------------------------------

    async def _run(
        self,
        reply: ActiveReply,
        options: ResponseOptions,
        transcription: asyncio.Task[Exception | None] | None,
        failure: Exception | None = None,
    ) -> None:
        """`failure`: the transcription of the turn failed (already reported): the reply fails."""
        _RUNNING_REPLY.set(reply)  # this task's own context: its tool calls know their reply
        host = self._host
        session = host.model_session
        if transcription is not None:
            failure = await asyncio.shield(transcription)  # the user's words count even if we are cut off
        previous, host.last_item_id = host.last_item_id, reply.item_id
        await self._emit(
            reply,
            ResponseStarted(
                reply.response_id,
                reply.item_id,
                reply.with_audio,
                previous,
                host.config,
                self.io(reply).metadata,
            ),
        )
        io = self.io(reply)
        try:
            if failure is not None:
                raise failure  # the user's words were not heard: nothing to answer
            resampler = StreamResampler(
                session.capabilities.output_sample_rate_hz, host.config.output_format.sample_rate_hz
            )
            async for event in session.respond(options):
                if isinstance(event, TextDelta):
                    reply.transcript += event.text
                    await self._emit(
                        reply, ResponseText(reply.response_id, reply.item_id, reply.with_audio, event.text)
                    )
                elif isinstance(event, ToolCallRequest):
                    await self._send_function_call(reply, event)
                elif isinstance(event, AudioChunk) and reply.with_audio:
                    out = resampler.push(event.frame)
                    if out.sample_count:
                        self._queue_audio(reply, out)
            if reply.with_audio:
                tail = resampler.flush()
                if tail.sample_count:
                    self._queue_audio(reply, tail)
            if reply.produced_all():
                self._playout.end_input()
                self._playout_wakeup.set()
            self._record_stage_timings(session)
            if reply.with_audio:
                await io.all_sent.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a backend failed mid-reply: this response fails, the session lives
            await self._fail(reply, exc)
            return
        answer_path = session.timings.answer_path
        await self._close(reply, "completed", answer_path=answer_path)
        host.publish(
            AssistantTurn(host.config.id, reply.item_id, reply.transcript, "completed", False, answer_path)
        )
        played_out = self._playout.played_out_at_ms()
        if played_out is not None:
            await asyncio.sleep(max(0.0, played_out / 1000 - self._clock()))
        self._finish(reply)

    async def _fail(self, reply: ActiveReply, exc: Exception) -> None:
        host = self._host
        log.error(  # the brain is embedding code: its messages may quote the caller
            "reply failed",
            extra={
                "session_id": host.config.id,
                "response_id": reply.response_id,
                **error_fields(exc, with_message=self._privacy.log_transcripts),
            },
        )
        code = failure_code(exc)
        if reply.is_released:
            self._playout.clear(self._clock() * 1000)
        reply.fail()
        message = str(exc) or type(exc).__name__
        error = {"type": "server_error", "code": code, "message": message}
        await self._close(reply, "failed", reason="error", error=error)
        await self._emit(
            reply,
            Failed(
                f"the response failed: {exc}" if str(exc) else "the response failed",
                code,
                type="server_error",
            ),
        )
        self._metrics.errors.labels(code=code).inc()
        host.publish(AssistantTurn(host.config.id, reply.item_id, reply.transcript, "failed", False))
        self._finish(reply)

    def _record_stage_timings(self, session: OmniSession) -> None:
        t = session.timings
        if t.llm_first_token_ms is not None:
            self._metrics.llm_first_token.observe(t.llm_first_token_ms / 1000)
        if t.tts_first_audio_ms is not None:
            self._metrics.tts_first_audio.observe(t.tts_first_audio_ms / 1000)
        if t.anticipated is not None:
            self._metrics.anticipations.labels(outcome="kept" if t.anticipated else "discarded").inc()
        if t.answer_path is not None:
            self._metrics.answers.labels(path=t.answer_path).inc()

    def _finish(self, reply: ActiveReply) -> None:
        if reply.finish():
            self._turns.receive(ReplyFinished(reply.reply_id), self._host.input_ms())

    async def _close(
        self,
        reply: ActiveReply,
        status: str,
        reason: str | None = None,
        error: dict[str, Any] | None = None,
        answer_path: str | None = None,
    ) -> None:
        """The closing events of a response, in protocol order; once per reply."""
        if not reply.close():
            return
        said = reply.transcript.strip()
        if said:  # the reply's message, as the caller heard it (a silent reply left none)
            self._host.remember_item(
                reply.item_id, lambda m: m.role == "assistant" and not m.tool_calls and m.text.strip() == said
            )
        await self._emit(
            reply,
            ResponseEnded(
                reply.response_id,
                reply.item_id,
                reply.with_audio,
                reply.transcript,
                status,
                self._host.config,
                reason=reason,
                error=error,
                function_calls=tuple(self.io(reply).function_calls),
                metadata=self.io(reply).metadata,
                answer_path=answer_path,
            ),
        )
        self._metrics.responses.labels(status=status).inc()

    # --- pausing (the caller talks over the reply) ----------------------------------------------

    def pause(self, reply_id: int) -> None:
        """Stop sending the reply's audio; the rest stays queued (turns.py decides)."""
        reply = self.current
        if reply is not None and reply.reply_id == reply_id and not reply.is_finished:
            self._playout.pause(self._clock() * 1000)

    def resume(self, reply_id: int) -> float:
        """Send the paused reply's audio again from where it stopped. Returns the silence
        the caller heard meanwhile (ms), 0 if it was not paused."""
        reply = self.current
        if reply is None or reply.reply_id != reply_id or not self._playout.is_paused:
            return 0.0
        silence_ms = self._playout.resume(self._clock() * 1000)
        self._playout_wakeup.set()
        return silence_ms

    # --- stopping ------------------------------------------------------------------------------

    async def cancel(self, *, reason: str) -> None:
        """Barge-in (`turn_detected`) or a client's cancel: stop the current reply now."""
        reply = self.current
        if reply is None or reply.is_finished:
            return
        detected_s = self._clock()
        was_generating = reply.cancel()
        heard_ms = self._playout.clear(detected_s * 1000)
        self._playout_wakeup.set()
        task = self.io(reply).task
        if task is not None and task is not asyncio.current_task():
            await cancel_and_wait(task, CANCEL_TIMEOUT_S)
        self._metrics.barge_in_reaction.observe(self._clock() - detected_s)
        if reason == "turn_detected":
            self._metrics.interruptions.inc()
        if was_generating:
            await self._close(reply, "cancelled", reason=reason)
        self._finish(reply)
        if reply.with_audio and reply.audio_sent_ms > 0:
            await self._truncate(reply, heard_ms)
        host = self._host
        if reason == "turn_detected":
            host.publish(Interrupted(host.config.id, reply.item_id, heard_ms))
        if was_generating or reply.audio_sent_ms > 0:
            host.publish(AssistantTurn(host.config.id, reply.item_id, reply.transcript, "cancelled", True))

    async def cancel_response(self, response_id: str | None) -> None:
        """A client's `response.cancel`."""
        reply = self.current
        if reply is None or not reply.is_generating:
            raise ProtocolViolation("no response is in progress", code="response_cancel_not_active")
        if response_id is not None and response_id != reply.response_id:
            raise ProtocolViolation(
                f"response {response_id!r} is not in progress",
                code="response_cancel_not_active",
                param="response_id",
            )
        await self.cancel(reason="client_cancelled")

    async def _truncate(self, reply: ActiveReply, audio_end_ms: int, *, source: str = "server") -> None:
        host = self._host
        kept = host.model_session.truncate_reply(audio_end_ms)
        reply.truncate(kept)
        await host.send(ItemTruncated(reply.item_id, audio_end_ms))
        host.publish(Truncated(host.config.id, reply.item_id, audio_end_ms, kept, source))

    async def truncate_item(self, command: TruncateItem) -> None:
        """The client says how much of the assistant's item it played."""
        reply = self.current
        if reply is None or reply.item_id != command.item_id:
            raise ProtocolViolation(
                f"item {command.item_id!r} is not the assistant's last audio item",
                code="item_not_found",
                param="item_id",
            )
        if command.content_index != 0:
            raise ProtocolViolation("content_index must be 0", code="invalid_value", param="content_index")
        if command.audio_end_ms > reply.audio_sent_ms + 1:
            raise ProtocolViolation(
                f"audio_end_ms {command.audio_end_ms} is beyond the {reply.audio_sent_ms:.0f} ms of audio sent",
                code="invalid_value",
                param="audio_end_ms",
            )
        if not reply.is_finished:
            was_generating = reply.cancel()
            self._playout.clear(self._clock() * 1000)
            task = self.io(reply).task
            if task is not None:
                await cancel_and_wait(task, CANCEL_TIMEOUT_S)
            if was_generating:
                await self._close(reply, "cancelled", reason="client_cancelled")
            self._finish(reply)
        await self._truncate(reply, command.audio_end_ms, source="client")

    async def aclose(self) -> None:
        """The session ends: stop whatever reply is running."""
        for reply in (self.current, self.prepared):
            if reply is not None:
                reply.cancel()
                await cancel_and_wait(self.io(reply).task, CANCEL_TIMEOUT_S)

    # --- client-side tools -----------------------------------------------------------------------

    async def tools_may_run(self) -> None:
        """Server-side tools of a speculative reply wait until it is adopted: a turn that goes
        on cancels the reply, and the tool never runs (tools may have side effects)."""
        reply = _RUNNING_REPLY.get()
        if reply is not None:
            await self.io(reply).released.wait()

    async def _send_function_call(self, reply: ActiveReply, call: ToolCallRequest) -> None:
        """The model called a client-side tool: announce the function_call item now; the
        client runs it and answers with a function_call_output item."""
        host = self._host
        item_id = new_id("item")
        previous, host.last_item_id = host.last_item_id, item_id
        made = FunctionCall(item_id, call.call_id, call.name, call.arguments_json)
        calls = self.io(reply).function_calls
        output_index = 1 + len(calls)  # the reply's message is output 0
        await self._emit(reply, FunctionCallMade(reply.response_id, output_index, made, previous))
        calls.append(made)
        self._pending_calls[call.call_id] = _PendingCall(call.name, call.arguments_json, self._clock())

    async def replay_function_call(self, command: AddFunctionCall) -> None:
        """A client's `function_call` item: it joins the history, and its output may follow."""
        call = ToolCallRequest(command.call_id, command.name, command.arguments_json)
        host = self._host
        host.model_session.add_function_call(call)
        item_id = command.item_id or new_id("item")
        host.remember_item(item_id, lambda m: call in m.tool_calls)
        self._pending_calls[call.call_id] = _PendingCall(call.name, call.arguments_json, self._clock())
        previous, host.last_item_id = host.last_item_id, item_id
        await host.send(
            FunctionCallAdded(FunctionCall(item_id, call.call_id, call.name, call.arguments_json), previous)
        )

    async def function_output(self, command: AddFunctionOutput) -> None:
        if command.call_id is None:
            raise ProtocolViolation(
                "function_call_output needs the call_id of the call it answers",
                code="missing_field",
                param="item.call_id",
            )
        if command.output is None:
            raise ProtocolViolation(
                "function_call_output needs an output string", code="missing_field", param="item.output"
            )
        pending = self._pending_calls.pop(command.call_id, None)
        if pending is None:
            raise ProtocolViolation(
                f"no function call {command.call_id[:80]!r} is waiting for output",
                code="call_id_not_found",
                param="item.call_id",
            )
        host = self._host
        host.model_session.add_tool_result(command.call_id, command.output)
        item_id = command.item_id or new_id("item")
        call_id = command.call_id
        host.remember_item(item_id, lambda m: m.role == "tool" and m.tool_call_id == call_id)
        previous, host.last_item_id = host.last_item_id, item_id
        await host.send(FunctionOutputAdded(item_id, command.call_id, command.output, previous))
        arguments: Mapping[str, object] | str = pending.arguments_json
        with contextlib.suppress(ValueError):
            parsed = json.loads(pending.arguments_json)
            arguments = parsed if isinstance(parsed, dict) else pending.arguments_json
        host.publish(
            ToolCalled(
                host.config.id,
                command.call_id,
                pending.name,
                arguments,
                command.output,
                None,
                (self._clock() - pending.sent_s) * 1000,
                client_side=True,
            )
        )
