"""The desk's dialogue manager: keyword intents, slot filling across turns, yes/no confirmation.

A plain state machine (no I/O, no clock, no awaits). The brain (`brain.py`) feeds it:

    step = respond(state, transcript, caller_name)   # Say(text, state) or CallTool(...)
    if isinstance(step, CallTool):
        result = await request.call_tool(step.name, step.arguments)
        step = after_tool(step, result.value)         # always a Say
    speak(step.text); state = step.state              # the state for the next turn

What it understands (`hear`): intents by keywords in the recogniser's lower-case words, and
an order number said any way `spoken_numbers.order_number` reads ("order one two three four",
"twelve thirty four", "1234"). Precedence in a turn: a person (transfer) > an awaited yes/no >
an awaited order number > refund > order status > a plain no (goodbye) or yes (the menu) >
goodbye > greeting.

States (`Awaiting`):
    NOTHING --"where is my order"--> ORDER_FOR_STATUS --"1234"--> [order_status] --> NOTHING
    NOTHING --"refund"--> ORDER_FOR_REFUND --"1234"--> [order_status] --refundable-->
        REFUND_CONFIRMATION --"yes"--> [request_refund] --> NOTHING
                            --"no"--> NOTHING
    any --"a person"--> [transfer_to_human] --> NOTHING
A turn that names the order ("refund order 1234") skips the question. An order that is not
found, or a number that is not 4 digits, asks again and keeps what was awaited.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Final

from examples.customer_service.results import OrderStatus, RefundOutcome, Transfer
from examples.customer_service.spoken_numbers import ORDER_ID_DIGITS, digit_runs, order_number, spoken_digits


class Intent(Enum):
    HUMAN = "human"
    REFUND = "refund"
    ORDER_STATUS = "order_status"
    YES = "yes"
    NO = "no"
    GOODBYE = "goodbye"
    GREETING = "greeting"


_KEYWORDS: Final[dict[Intent, re.Pattern[str]]] = {
    Intent.HUMAN: re.compile(
        r"\b(human|person|people|agent|representative|operator|someone|somebody|manager|colleague)\b"
    ),
    Intent.REFUND: re.compile(r"\b(refund\w*|money back|reimburse\w*|return it|send it back)\b"),
    Intent.ORDER_STATUS: re.compile(
        r"\b(where|status|track\w*|package|parcel|deliver\w*|ship\w*|arriv\w*|order\w*)\b"
    ),
    Intent.YES: re.compile(r"\b(yes|yeah|yep|yup|sure|okay|ok|correct|right|please do|go ahead|do it)\b"),
    Intent.NO: re.compile(r"\b(no|nope|don'?t|do not|never mind|nevermind|stop)\b"),
    Intent.GOODBYE: re.compile(r"\b(bye|goodbye|that'?s all|that is all|thank you|thanks|nothing else)\b"),
    Intent.GREETING: re.compile(r"\b(hello|hi|hey|good (morning|afternoon|evening))\b"),
}

HELP: Final = "I can check on an order, refund one, or put you through to a person."
ASK_ORDER: Final = "What's the order number? Please say its four digits."
TOOL_FAILED: Final = "Sorry, our order system isn't answering right now. Please try again in a moment."


@dataclass(frozen=True, slots=True)
class Heard:
    """What one transcript says: its intents, the order number in it (if any), and every
    number said (to tell the caller when a number had the wrong length)."""

    intents: frozenset[Intent]
    order_id: str | None
    numbers: tuple[str, ...]


def hear(transcript: str) -> Heard:
    text = " ".join(transcript.lower().split())
    intents = frozenset(intent for intent, pattern in _KEYWORDS.items() if pattern.search(text))
    return Heard(intents, order_number(text), tuple(digit_runs(text)))


class Awaiting(Enum):
    NOTHING = "nothing"
    ORDER_FOR_STATUS = "order_for_status"
    ORDER_FOR_REFUND = "order_for_refund"
    REFUND_CONFIRMATION = "refund_confirmation"


@dataclass(frozen=True, slots=True)
class DialogueState:
    """What the desk waits for; the order and the refund reason carried between turns;
    `misses`: turns in a row it did not understand."""

    awaiting: Awaiting = Awaiting.NOTHING
    order_id: str | None = None
    reason: str = ""
    misses: int = 0


class Purpose(Enum):
    """Why a tool is called, which decides what is said with its result."""

    STATUS = "status"
    REFUND_CHECK = "refund_check"
    REFUND = "refund"
    TRANSFER = "transfer"


@dataclass(frozen=True, slots=True)
class Say:
    text: str
    state: DialogueState


@dataclass(frozen=True, slots=True)
class CallTool:
    """Call `name` with `arguments`, then pass its result to `after_tool`."""

    name: str
    arguments: Mapping[str, str]
    purpose: Purpose
    state: DialogueState = field(default_factory=DialogueState)


Step = Say | CallTool


def opening(caller_name: str | None) -> str:
    """What the desk says as a call connects, before the caller speaks (its session greeting)."""
    return f"Thanks for calling{_first_name(caller_name, ',')}. {HELP} How can I help?"


def _first_name(caller_name: str | None, before: str = "") -> str:
    return f"{before} {caller_name.split()[0]}" if caller_name else ""


def respond(state: DialogueState, transcript: str, caller_name: str | None = None) -> Step:
    """The desk's next step after the caller said `transcript` in `state`."""
    heard = hear(transcript)
    intents = heard.intents
    if not transcript.strip():
        return Say(f"Sorry, I didn't hear anything. {HELP}", state)
    if Intent.HUMAN in intents:
        reason = transcript.strip() or "caller asked for a person"
        return CallTool("transfer_to_human", {"reason": reason}, Purpose.TRANSFER, DialogueState())
    if state.awaiting is Awaiting.REFUND_CONFIRMATION and state.order_id is not None:
        confirmed = _confirmation(heard)
        if confirmed is True:
            arguments = {"order_id": state.order_id, "reason": state.reason}
            return CallTool("request_refund", arguments, Purpose.REFUND, DialogueState())
        if confirmed is False:
            return Say(f"Okay, I won't refund it. {_anything_else()}", DialogueState())
        if not (heard.order_id or intents & {Intent.REFUND, Intent.ORDER_STATUS}):
            said = spoken_digits(state.order_id)
            return Say(f"Sorry, was that a yes or a no? Shall I refund order {said}?", _missed(state))
    awaits_order = state.awaiting in (Awaiting.ORDER_FOR_STATUS, Awaiting.ORDER_FOR_REFUND)
    if awaits_order and heard.order_id is not None:
        if state.awaiting is Awaiting.ORDER_FOR_REFUND or Intent.REFUND in intents:
            return _check_refund(heard.order_id, state.reason or transcript.strip())
        return _check_status(heard.order_id)
    if Intent.REFUND in intents:
        if heard.order_id is not None:
            return _check_refund(heard.order_id, transcript.strip())
        awaiting = DialogueState(Awaiting.ORDER_FOR_REFUND, reason=transcript.strip())
        return _ask_order(heard, awaiting, "Sure, I can help with a refund.")
    if heard.order_id is not None:  # a bare number: the caller wants to know about that order
        return _check_status(heard.order_id)
    if awaits_order:
        return _ask_order(heard, _missed(state), "Sorry, I didn't catch the order number.")
    if Intent.ORDER_STATUS in intents:
        return _ask_order(heard, DialogueState(Awaiting.ORDER_FOR_STATUS), "Sure.")
    if Intent.NO in intents and Intent.YES not in intents:  # "no" to "anything else?"
        return Say("All right. Thanks for calling, goodbye!", DialogueState())
    if Intent.YES in intents and Intent.NO not in intents:
        return Say(f"Sure. {HELP} Which would you like?", DialogueState())
    if Intent.GOODBYE in intents:
        return Say("You're welcome. Thanks for calling, goodbye!", DialogueState())
    if Intent.GREETING in intents:
        return Say(f"Hi{_first_name(caller_name)}! {HELP} How can I help?", DialogueState())
    missed = _missed(state)
    if missed.misses >= 2:
        return Say(f"Sorry, I'm still not getting it. {HELP} Just say which.", missed)
    return Say(f"Sorry, I didn't understand. {HELP}", missed)


def after_tool(call: CallTool, value: object) -> Say:
    """What to say with a tool's result (`ToolResult.value`: None when the call failed)."""
    match call.purpose, value:
        case Purpose.TRANSFER, Transfer():
            return Say(value.say, DialogueState())
        case Purpose.REFUND, RefundOutcome():
            return Say(f"{value.say} {_anything_else()}", DialogueState())
        case Purpose.STATUS, OrderStatus():
            if not value.found:
                return Say(f"{value.say} {ASK_ORDER}", DialogueState(Awaiting.ORDER_FOR_STATUS))
            return Say(f"{value.say} {_anything_else()}", DialogueState())
        case Purpose.REFUND_CHECK, OrderStatus():
            reason = call.state.reason
            if not value.found:
                return Say(
                    f"{value.say} {ASK_ORDER}", DialogueState(Awaiting.ORDER_FOR_REFUND, reason=reason)
                )
            offer = value.refund_offer or value.say
            if value.refundable:
                return Say(offer, DialogueState(Awaiting.REFUND_CONFIRMATION, value.order_id, reason))
            return Say(f"{offer} {_anything_else()}", DialogueState())
    return Say(TOOL_FAILED, DialogueState())


def _check_status(order_id: str) -> CallTool:
    return CallTool("order_status", {"order_id": order_id}, Purpose.STATUS, DialogueState())


def _check_refund(order_id: str, reason: str) -> CallTool:
    return CallTool(
        "order_status",
        {"order_id": order_id},
        Purpose.REFUND_CHECK,
        DialogueState(Awaiting.ORDER_FOR_REFUND, order_id, reason),
    )


def _ask_order(heard: Heard, state: DialogueState, lead: str) -> Say:
    """Ask for the order number; say so when a number was heard with the wrong length."""
    wrong = [n for n in heard.numbers if len(n) != ORDER_ID_DIGITS]
    if wrong:
        heard_number = spoken_digits(wrong[0])
        return Say(
            f"I heard {heard_number}, but order numbers have four digits. Could you say it again?", state
        )
    return Say(f"{lead} {ASK_ORDER}", state)


def _confirmation(heard: Heard) -> bool | None:
    yes, no = Intent.YES in heard.intents, Intent.NO in heard.intents
    if yes == no:
        return None
    return yes


def _missed(state: DialogueState) -> DialogueState:
    return replace(state, misses=state.misses + 1)


def _anything_else() -> str:
    return "Is there anything else I can help with?"


MAX_REMEMBERED_TURNS = 256  # a call longer than this forgets its oldest dialogue states


@dataclass(slots=True)
class DialogueMemory:
    """One call's dialogue states, keyed by the caller's words up to the turn that left them."""

    states: dict[tuple[str, ...], DialogueState] = field(default_factory=dict)

    def before(self, earlier_turns: tuple[str, ...]) -> DialogueState:
        return self.states.get(earlier_turns, DialogueState())

    def remember(self, turns: tuple[str, ...], state: DialogueState) -> None:
        self.states[turns] = state
        while len(self.states) > MAX_REMEMBERED_TURNS:
            del self.states[next(iter(self.states))]
