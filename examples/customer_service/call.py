"""The call a session belongs to: who phoned, and the dialogue's memory of it.

The example's `session_setup` hook sets `current_call` for each session. Voxgate awaits the
hook in the session's own task before it starts the conversation, and asyncio gives every task
it then starts (the reply, the brain, the tools) a copy of that context, so they all see the
call they serve without it being passed through Voxgate.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field

from examples.customer_service.dialogue import DialogueMemory
from examples.customer_service.store import Customer


@dataclass(frozen=True, slots=True)
class CallContext:
    """`call_id` is the desk's own id for the call (in refund and handoff rows, and in the
    session metadata); `caller` the number or name given; `customer` None when unknown."""

    call_id: str
    caller: str
    customer: Customer | None
    memory: DialogueMemory = field(default_factory=DialogueMemory)


current_call: ContextVar[CallContext | None] = ContextVar("current_call", default=None)


def normalize_phone(number: str) -> str:
    """A caller's number as the customers table keeps it (E.164): '+1 555 010 0001',
    '15550100001' and ' 15550100001' (a '+' that a query string turned into a space) ->
    '+15550100001'; a 10-digit number is taken as North American. '' if it has no digits."""
    digits = "".join(c for c in number if c.isdigit())
    if not digits:
        return ""
    if len(digits) == 10:
        digits = "1" + digits
    return "+" + digits


def llm_instructions(customer: Customer | None) -> str:
    """The system prompt for a tool-capable language model (VOXGATE_LLM=openai)."""
    who = (
        f"The caller is {customer.name}, customer number {customer.id}."
        if customer is not None
        else "The caller's number is not on file."
    )
    return (
        "You are the phone support desk of Example Ltd. " + who + " You can look up an order"
        " with order_status, refund a shipped or delivered order with request_refund, and put the"
        " caller through to a person with transfer_to_human. Order numbers have four digits; if"
        " the caller has not given one, ask for it. Before request_refund, tell the caller the"
        " amount and ask them to confirm with yes or no. Each tool result has a `say` sentence"
        " you may read out. Reply in one or two short spoken sentences, without lists or"
        " formatting, and read order numbers digit by digit."
    )
