"""One reply's language-model rounds when the model may call tools.

    async for item in complete_with_tools(stream, history, options, say):
        str              -> reply text, in order
        ToolExchange     -> messages to add to the history before the reply (a call and results)
        ToolCallRequest  -> a client-side call: hand it to the protocol client; the reply ends

A round streams the model. If it asked for tools, the server-side ones run (in order; a slow
one's filler goes to `say`, which the caller speaks as a phrase of its own), their results join
the history and the model is asked again. Client-side calls end the reply after the round:
their output arrives later, as a `tool` message, before the next reply. A tool_choice that
forces a call ("required", or one named function) applies to the first round only; later rounds
are "auto", so the model can answer with what the tools returned (as the OpenAI Agents SDK's
`reset_tool_choice` does). After `max_rounds` rounds with calls, one last round is asked with
tool_choice "none", so every reply ends.

Invariants: the caller's history is never mutated here; cancelling the iteration cancels the
running tool (ToolRunner.call runs it as an owned task); a request the model makes in the last
round, or for a tool that does not exist, never runs an unvalidated function.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from server.model.base import Message, SessionOptions
from server.model.tool_calls import ToolCallRequest, ToolChoice, ToolResult, ToolRunner, ToolSpec

log = logging.getLogger(__name__)

MAX_TOOL_ROUNDS = 4

LlmStream = Callable[[Sequence[Message], SessionOptions], AsyncIterator[str | ToolCallRequest]]


@dataclass(frozen=True, slots=True)
class ToolExchange:
    """An assistant message carrying the round's calls (its text empty: what was said stays
    in the reply's own message), then one `tool` message per server-side result, in order."""

    messages: tuple[Message, ...]


class _WithChoice:
    """The session's tools under another tool_choice for one round ("none": offered, since the
    history refers to them, but not to be called)."""

    def __init__(self, tools: ToolRunner, choice: ToolChoice) -> None:
        self._tools = tools
        self._choice = choice

    @property
    def choice(self) -> ToolChoice:
        return self._choice

    def specs(self) -> Sequence[ToolSpec]:
        return self._tools.specs()

    def is_client_side(self, name: str) -> bool:
        return self._tools.is_client_side(name)

    async def call(
        self,
        name: str,
        arguments: str | Mapping[str, Any],
        say: Callable[[str], None] | None = None,
        call_id: str = "",
    ) -> ToolResult:
        return await self._tools.call(name, arguments, say, call_id)


async def complete_with_tools(
    stream: LlmStream,
    history: Sequence[Message],
    options: SessionOptions,
    say: Callable[[str], None],
    max_rounds: int = MAX_TOOL_ROUNDS,
) -> AsyncIterator[str | ToolExchange | ToolCallRequest]:
    tools = options.tools
    history = list(history)
    for round_no in range(max_rounds + 1):
        last = round_no == max_rounds
        round_options = options
        if tools is not None and last:
            round_options = replace(options, tools=_WithChoice(tools, "none"))
        elif tools is not None and round_no > 0 and tools.choice not in ("auto", "none"):
            round_options = replace(options, tools=_WithChoice(tools, "auto"))
        calls: list[ToolCallRequest] = []
        text: list[str] = []
        async for piece in stream(history, round_options):
            if isinstance(piece, ToolCallRequest):
                calls.append(piece)
            else:
                text.append(piece)
                yield piece
        if not calls:
            return
        if tools is None or last:
            log.warning(
                "language model asked for tools it may not call now; ignored",
                extra={"calls": len(calls), "round": round_no},
            )
            return
        # the spoken text stays in the reply's own message; the model's next round sees it here
        messages = [Message("assistant", "", tool_calls=tuple(calls))]
        client_calls: list[ToolCallRequest] = []
        spoke_filler = False

        def say_once(filler: str) -> None:
            nonlocal spoke_filler
            if not spoke_filler:
                spoke_filler = True
                say(filler)

        for call in calls:
            if tools.is_client_side(call.name):
                client_calls.append(call)
                continue
            result = await tools.call(call.name, call.arguments_json, say_once, call.call_id)
            messages.append(Message("tool", result.output, tool_call_id=call.call_id))
        history.extend([replace(messages[0], text="".join(text).strip()), *messages[1:]])
        yield ToolExchange(tuple(messages))
        if client_calls:
            for call in client_calls:
                yield call
            return


def insert_before(history: list[Message], anchor: Message, messages: Sequence[Message]) -> None:
    """Put `messages` just before `anchor` (found by identity), or at the end without it."""
    at = next((i for i, m in enumerate(history) if m is anchor), len(history))
    history[at:at] = messages


def insert_tool_result(history: list[Message], result: Message) -> None:
    """Put a client's `tool` result right after the call it answers (and that call's other
    results): chat APIs want each assistant tool_calls message followed by its results."""
    at = len(history)
    for i in range(len(history) - 1, -1, -1):
        if any(c.call_id == result.tool_call_id for c in history[i].tool_calls):
            at = i + 1
            while at < len(history) and history[at].role == "tool":
                at += 1
            break
    history.insert(at, result)
