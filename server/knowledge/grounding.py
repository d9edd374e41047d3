"""Grounding: how a reply uses the operator's knowledge, and the specifics guard on the
language model's words. One per knowledge base, shared by the sessions that use it.

Per reply (`reply`), from the caller's last line:
1. the knowledge index is searched (retrieval.py; usually already done while the caller was
   speaking, by `look_ahead` on the recogniser's hypothesis, so the lookup is a cache hit);
2. a confident match speaks the entry's answer as written: no language model (path
   "knowledge"); a less sure one the same after a hedge ("knowledge_hedged",
   retrieval.py); a weaker one adds the best entries to the request as a system note after
   the caller's line ("grounded_model"); no match asks the model alone ("model");
3. the model's text is cut into the phrases the cascade will speak (the cascade's own
   PhraseSplitter, so the cuts agree) and each phrase is checked by the specifics guard
   before it is passed on: a phrase with a number, date, phone number, email or URL that
   neither the knowledge, the instructions nor the conversation holds is never spoken; the
   generation stops and the honest fallback is said instead ("fallback"). Phrases already
   passed on stay (they held no invented specific). A phrase in the caller's voice (role.py:
   "I ordered a jacket", "call me at ...") is replaced the same way, by a plain "how can I
   help" ("fallback" too). Checked replies are sampled at a temperature of at most
   CHECKED_MAX_TEMPERATURE.

`report(path)` is called with the path before the first text, and again with "fallback"
if the guard stops the model. Tool calls pass through untouched; tool results are part of
the conversation, so the specifics they hold may be spoken.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Literal

from server.knowledge.knowledge import KnowledgeEntry
from server.knowledge.retrieval import AskModel, GroundModel, KnowledgeIndex, SpeakAnswer
from server.knowledge.role import speaks_as_caller
from server.knowledge.specifics import SpecificsGuard
from server.model.base import Message, SessionOptions
from server.model.phrases import PhraseSplitter
from server.model.tool_calls import ToolCallRequest

AnswerPath = Literal["knowledge", "knowledge_hedged", "grounded_model", "model", "fallback"]
ANSWER_PATHS: tuple[AnswerPath, ...] = (
    "knowledge",
    "knowledge_hedged",
    "grounded_model",
    "model",
    "fallback",
)
FALLBACK_REPLY = "I don't have that information; I can connect you to a colleague."
ROLE_FALLBACK_REPLY = "How can I help you?"
# checked replies are sampled at most this hot: with its examples, the shipped Gemma 3 270M
# spoke as the customer 6 times in 50 lines at 0.8, 1-3 at 0.2 before the role check
# (BENCHMARKS.md, "Operator knowledge")
CHECKED_MAX_TEMPERATURE = 0.2
NOTE_PREFIX = "Notes:"

LlmStream = Callable[[Sequence[Message], SessionOptions], AsyncIterator[str | ToolCallRequest]]


_CALLER_TO_AGENT = {"i": "you", "i'm": "you're", "me": "you", "my": "your", "mine": "yours", "am": "are"}


def hedged_answer(entry: KnowledgeEntry) -> str:
    """An answer to a weaker match, after its first question, said back to the caller:
    "If you mean can you change your delivery address: ..." (from "can i change my ...")."""
    words = entry.questions[0].rstrip("?.! ").split()
    question = " ".join(_CALLER_TO_AGENT.get(w.lower(), w) for w in words)
    return f"If you mean {question}: {entry.answer}"


def knowledge_note(plan: GroundModel) -> str:
    """The system note a grounded request gets: the matched answers and facts."""
    texts = [s.item.answer if isinstance(s.item, KnowledgeEntry) else s.item.text for s in plan.items]
    return f"{NOTE_PREFIX} {' '.join(texts)}"


class Grounding:
    """`index`: the knowledge (None: no knowledge, the guard only). `guard_specifics`: check
    the model's phrases (module docstring); off for a language model the operator trusts."""

    def __init__(
        self,
        index: KnowledgeIndex | None,
        *,
        guard_specifics: bool = True,
        fallback_reply: str = FALLBACK_REPLY,
    ) -> None:
        self.index = index
        self.guard_specifics = guard_specifics
        self.fallback_reply = fallback_reply

    async def look_ahead(self, words: str) -> None:
        """Search for `words` now (the caller is still speaking), so the reply to the same
        words finds the result cached."""
        if self.index is not None and words.strip() and not self.index.is_cached(words):
            await asyncio.to_thread(self.index.search, words)

    async def plan(self, history: Sequence[Message]) -> SpeakAnswer | GroundModel | AskModel:
        """How to answer the caller's last line (AskModel when the history does not end
        with one, e.g. a round after tool results)."""
        if self.index is None or not history or history[-1].role != "user" or not history[-1].text.strip():
            return AskModel(None)
        words = history[-1].text
        if self.index.is_cached(words):
            return self.index.plan(words)
        return await asyncio.to_thread(self.index.plan, words)

    async def reply(
        self,
        complete: LlmStream,
        history: Sequence[Message],
        options: SessionOptions,
        report: Callable[[AnswerPath], None],
    ) -> AsyncIterator[str | ToolCallRequest]:
        """The reply's text (module docstring). Closing the iteration closes the model's."""
        plan = await self.plan(history)
        if isinstance(plan, SpeakAnswer):
            report("knowledge_hedged" if plan.hedged else "knowledge")
            yield hedged_answer(plan.entry) if plan.hedged else plan.entry.answer
            return
        request: Sequence[Message] = history
        if isinstance(plan, GroundModel):
            request = [*history, Message("system", knowledge_note(plan))]
        report("grounded_model" if isinstance(plan, GroundModel) else "model")
        if not self.guard_specifics:
            async for piece in complete(request, options):
                yield piece
            return
        caller_words = history[-1].text if history and history[-1].role == "user" else ""
        stream = complete(
            request, replace(options, temperature=min(options.temperature, CHECKED_MAX_TEMPERATURE))
        )
        guard = self._guard(history, options)
        splitter = PhraseSplitter()
        said = ""  # the last phrase passed on
        try:
            async for piece in stream:
                if not isinstance(piece, str):
                    yield piece
                    continue
                for phrase in splitter.push(piece):
                    instead = self._check(phrase, guard, caller_words)
                    if instead is not None:
                        report("fallback")
                        yield _after(said, instead)
                        return
                    said = phrase
                    yield phrase + " "
            rest = splitter.flush()
            if rest is not None:
                instead = self._check(rest, guard, caller_words)
                if instead is not None:
                    report("fallback")
                    rest = _after(said, instead)
                yield rest
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    def _check(self, phrase: str, guard: SpecificsGuard, caller_words: str) -> str | None:
        """None if `phrase` may be spoken, else what to say instead."""
        if guard.unsupported(phrase):
            return self.fallback_reply
        if speaks_as_caller(phrase, caller_words):
            return ROLE_FALLBACK_REPLY
        return None

    def _guard(self, history: Sequence[Message], options: SessionOptions) -> SpecificsGuard:
        known = [options.instructions, *(m.text for m in history)]
        if self.index is not None:
            known.append(self.index.knowledge.text)
        return SpecificsGuard(known)


def _after(said: str, instead: str) -> str:
    """`instead` following the phrase `said` (which was passed on with a trailing space):
    lower-cased after a comma ("Yes, how can I help you?")."""
    if said.endswith(",") and instead[:1].isupper() and not instead.startswith("I "):
        return instead[0].lower() + instead[1:]
    return instead
