"""The prompt of the embedded Gemma 3 270M, and the cutting of its reply.

Gemma 3 270M is a *base* model without a chat template, so a reply is the continuation of a
few-shot transcript of calls (`Customer:` / `Agent:` lines), cut at the end of the agent's
line, at a speaker tag, or after `max_sentences` sentences. Pure text: no model, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from server.model.base import Message

INTERRUPTED_MARK = "—"
SPEAKER_TAGS = ("Customer:", "Agent:")
FALLBACK_REPLY = "Sorry, could you say that again?"
# The agent's role and its honesty are taught by the examples more than by the system text:
# a base model continues the transcript. Measured on 50 caller lines (BENCHMARKS.md,
# "Operator knowledge"): the earlier prompt (four calls, no notes, no short caller lines)
# answered as the customer 16 times in 50 at temperature 0.8 ("Hi, I just bought a new
# phone."); these examples, where the agent answers "Hello?", "Yes.", "Hold on a second." as
# the agent and says it does not know what no note gives, 6 in 50; 0 at temperature 0.2 with
# the role check (server/knowledge/grounding.py lowers it for checked replies). A note line
# "(Notes: ...)" after the customer's line is how grounding passes the operator's entries.
DEFAULT_SYSTEM_TEXT = (
    "Transcripts of phone calls to the customer service line of an online shop. The agent works"
    " for the shop and answers the customer in one or two short sentences. The agent states prices,"
    " times and numbers only when the notes give them; otherwise the agent says so and offers to"
    " connect the customer to a colleague."
)
EXAMPLE_CALLS = """\
Call 1
Customer: Hello?
Agent: Hello, thanks for calling. How can I help you today?
Customer: I ordered a jacket last week and it still hasn't arrived.
Agent: I'm sorry about that. Could you tell me your order number, please?
Customer: It's 4 8 2 1 3.
Agent: Thank you. I'll connect you to a colleague who can check order 4 8 2 1 3.

Call 2
Customer: Do you ship to Canada?
(Notes: Shipping to Canada costs twelve dollars.)
Agent: Yes, we ship to Canada, and shipping costs twelve dollars.
Customer: How long does it take?
Agent: I don't have that information, but I can connect you to a colleague.
Customer: Okay, thanks.
Agent: You're welcome. Is there anything else I can help you with?

Call 3
Customer: I want to return a pair of shoes that don't fit.
(Notes: Returns are free within thirty days of delivery.)
Agent: No problem. Returns are free within thirty days of delivery.
Customer: Yes.
Agent: Great. Is there anything else I can help you with?

Call 4
Customer: Can I talk to a real person?
Agent: Of course. I'll connect you to a colleague now.

Call 5
Customer: Hold on a second.
Agent: Sure, take your time.
Customer: That's all, thank you.
Agent: You're welcome. Thanks for calling, and have a nice day.
"""
_SENTENCE_END = re.compile(r"[.!?]+(?=\s)")


# --- the prompt ----------------------------------------------------------------------------


def prefix_text(instructions: str) -> str:
    """System text and the example calls: the part of the prompt no turn changes."""
    system = " ".join(instructions.split()) or DEFAULT_SYSTEM_TEXT
    return f"{system}\n\n{EXAMPLE_CALLS}\nCall 6\n"


def turn_lines(history: Sequence[Message]) -> list[str]:
    """One transcript line per message (newline-terminated), in order. Newlines inside a
    message are flattened, because a newline ends a speaker's line."""
    lines = []
    for message in history:
        text = " ".join(message.text.split())
        if message.role == "assistant":
            if message.interrupted:
                text = f"{text} {INTERRUPTED_MARK}" if text else INTERRUPTED_MARK
            lines.append(f"Agent: {text}\n")
        elif text and message.role == "user":
            lines.append(f"Customer: {text}\n")
        elif text:  # a system note added mid-call
            lines.append(f"({text})\n")
    return lines


class ReplyCutter:
    """Turns the text the model streams into the reply: drops leading whitespace, ends the
    reply at a newline, at a speaker tag or after `max_sentences` sentences, and holds back
    trailing whitespace and a tail that may be the start of a speaker tag, so the joined
    pieces never start or end with whitespace. `push()` returns text safe to speak now;
    after `is_done`, further pushes return ""; `finish()` returns what was held back."""

    def __init__(self, max_sentences: int) -> None:
        self.max_sentences = max_sentences
        self.is_done = False
        self._text = ""
        self._emitted = 0

    @property
    def text(self) -> str:
        """The reply as emitted so far."""
        return self._text[: self._emitted]

    def push(self, piece: str) -> str:
        if self.is_done:
            return ""
        self._text = (self._text + piece).lstrip() if not self._emitted else self._text + piece
        end = len(self._text)
        for stop in ("\n", *SPEAKER_TAGS):
            found = self._text.find(stop, self._emitted)
            if found >= 0 and found < end:
                end, self.is_done = found, True
        for count, match in enumerate(_SENTENCE_END.finditer(self._text, 0, end), start=1):
            if count == self.max_sentences:
                end, self.is_done = match.end(), True
                break
        if not self.is_done:  # hold back a possible tag start and trailing whitespace
            end -= _tag_prefix_len(self._text[:end])
            while end > self._emitted and self._text[end - 1].isspace():
                end -= 1
        out = self._text[self._emitted : end]
        if self.is_done:
            out = out.rstrip()
            self._text = self._text[:end]
            end = self._emitted + len(out)
        self._emitted = end
        return out

    def finish(self) -> str:
        if self.is_done:
            return ""
        self.is_done = True
        out = self._text[self._emitted :].rstrip()
        self._emitted += len(out)
        return out


def _tag_prefix_len(text: str) -> int:
    """Length of the longest suffix of `text` that could begin a speaker tag."""
    for size in range(min(len(text), max(map(len, SPEAKER_TAGS)) - 1), 0, -1):
        if any(tag.startswith(text[-size:]) for tag in SPEAKER_TAGS):
            return size
    return 0
