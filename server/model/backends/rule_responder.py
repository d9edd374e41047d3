"""A keyword-rule customer-service responder, used until a real language model is wired in.

Order of calls:

    responder = load()
    async for piece in responder.complete(history, options):   # "Your ", "order ", ...
        ...

It is not a language model: it looks for keywords in the last user message and answers with
a fixed one- or two-sentence reply, streamed word by word. The same history always gives
the same reply.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from server.errors import BackendError
from server.model.base import Message, SessionOptions

_ECHO_WORDS = 6  # how much of an unrecognised request the fallback repeats


@dataclass(frozen=True, slots=True)
class Rule:
    """Reply with `reply` when the message holds any of `words` or `phrases`."""

    name: str
    words: frozenset[str]
    phrases: tuple[str, ...]
    reply: str

    def matches(self, words: Sequence[str]) -> bool:
        if self.words.intersection(words):
            return True
        text = " ".join(words)
        return any(re.search(rf"\b{re.escape(phrase)}\b", text) for phrase in self.phrases)


# First match wins: asking for a person beats everything, a greeting only counts when
# nothing more specific was said ("hi, I want a refund" is about the refund).
RULES: tuple[Rule, ...] = (
    Rule(
        "human_agent",
        frozenset({"human", "agent", "representative", "operator", "person"}),
        ("speak to someone", "talk to someone", "speak to somebody", "talk to somebody"),
        "Of course. I am transferring you to one of our agents now, please stay on the line.",
    ),
    Rule(
        "refund",
        frozenset({"refund", "refunds", "refunded", "reimburse", "reimbursement"}),
        ("money back", "return it", "return my", "send it back"),
        "I can help with a refund. Please tell me your order number and I will start it right away.",
    ),
    Rule(
        "order_status",
        frozenset(
            "order orders package parcel delivery deliver delivered shipping shipped shipment "
            "tracking track arrive arrived".split()
        ),
        ("where is my",),
        "Let me check on your order. Could you read me the order number from your confirmation email?",
    ),
    Rule(
        "goodbye",
        frozenset({"thanks", "thank", "bye", "goodbye", "cheers"}),
        ("that's all", "that is all"),
        "You are welcome. Thank you for calling, and have a nice day.",
    ),
    Rule(
        "greeting",
        frozenset({"hello", "hi", "hey", "greetings"}),
        ("good morning", "good afternoon", "good evening"),
        "Hello, thank you for calling. How can I help you today?",
    ),
)

_NOTHING_HEARD = "Sorry, I did not catch that. Could you say it again?"


def load(options: Mapping[str, object] | None = None) -> RuleBasedResponder:
    """Return the responder; it takes no options."""
    if options:
        raise BackendError(f"unknown rule responder options: {', '.join(sorted(options))}")
    return RuleBasedResponder()


class RuleBasedResponder:
    """Keyword rules standing in for a language model (an LlmBackend); not a language
    model. Replies depend only on the last user message; the system prompt, temperature
    and earlier turns are ignored."""

    def __init__(self, rules: Sequence[Rule] = RULES) -> None:
        self.rules = tuple(rules)

    def reply_to(self, history: Sequence[Message]) -> str:
        """The whole reply the next `complete()` call will stream."""
        last_user = next((m.text for m in reversed(history) if m.role == "user"), "")
        words = _words(last_user)
        if not words:
            return _NOTHING_HEARD
        for rule in self.rules:
            if rule.matches(words):
                return rule.reply
        heard = " ".join(words[:_ECHO_WORDS])
        ellipsis = "..." if len(words) > _ECHO_WORDS else ""
        return f'I heard "{heard}{ellipsis}". Could you tell me a little more about what you need?'

    async def complete(self, history: Sequence[Message], options: SessionOptions) -> AsyncIterator[str]:
        """Stream the reply one word at a time, each piece ending in a space. Stops after
        `options.max_output_tokens` words if that is set."""
        pieces = self.reply_to(history).split()
        if options.max_output_tokens is not None:
            pieces = pieces[: max(options.max_output_tokens, 0)]
        for piece in pieces:
            await asyncio.sleep(0)  # one word per loop turn, like a model streaming tokens
            yield piece + " "


def _words(text: str) -> list[str]:
    """Lower-case words with their apostrophes, punctuation dropped."""
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())
