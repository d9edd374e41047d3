"""The brain of the offline desk: the dialogue manager (`dialogue.py`) behind `VoiceAgent(brain=...)`.

Each turn Voxgate calls the brain with the conversation so far. The brain finds the dialogue
state the previous turn left, lets `dialogue.respond` decide, runs at most one tool through
`request.call_tool(...)` (so the call is validated, bounded by its timeout and reported as a
`ToolCalled` event) and yields one short reply.

Why states are looked up by the history, not kept as "the last state": Voxgate may start a
reply during the end-of-turn silence and throw it away when the caller goes on talking, and
it cuts a reply the caller talked over. So a turn's state is stored under the caller's words
up to and including that turn, and the next turn looks it up by the caller's words before it:
a reply that was thrown away leaves an entry nobody asks for, and a cut reply keeps its state
(the caller may answer "yes" to a question they heard half of).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from examples.customer_service.call import current_call
from examples.customer_service.dialogue import CallTool, DialogueMemory, after_tool, respond
from server import BrainRequest, Message


def user_turns(history: Sequence[Message]) -> tuple[tuple[str, ...], str]:
    """(the caller's earlier turns, the current one): user messages in a row are one turn."""
    turns: list[str] = []
    previous_role = None
    for message in history:
        if message.role == "user":
            text = message.text.strip()
            if previous_role == "user" and turns:
                turns[-1] = f"{turns[-1]} {text}".strip()
            else:
                turns.append(text)
        if message.role in ("user", "assistant"):
            previous_role = message.role
    if previous_role != "user" or not turns:
        return tuple(turns), ""  # nothing new from the caller (a response.create on its own)
    return tuple(turns[:-1]), turns[-1]


async def desk_brain(request: BrainRequest) -> AsyncIterator[str]:
    """`VoiceAgent(brain=desk_brain)`: needs the session's `CallContext` (set by the example's
    session_setup hook); without one every turn starts from a fresh dialogue."""
    call = current_call.get()
    memory = call.memory if call is not None else DialogueMemory()
    name = call.customer.name if call is not None and call.customer is not None else None
    earlier, current = user_turns(request.history)
    step = respond(memory.before(earlier), current, name)
    if isinstance(step, CallTool):
        result = await request.call_tool(step.name, **step.arguments)
        step = after_tool(step, result.value if result.ok else None)
    memory.remember((*earlier, current), step.state)
    yield step.text
