import re

import pytest

from server.errors import BackendError
from server.model.backends import rule_responder
from server.model.backends.rule_responder import RULES, RuleBasedResponder, load
from server.model.base import LlmBackend, Message, SessionOptions


async def reply(history: list[Message], options: SessionOptions | None = None) -> list[str]:
    responder: LlmBackend = load()
    pieces = [piece async for piece in responder.complete(history, options or SessionOptions())]
    texts = [piece for piece in pieces if isinstance(piece, str)]
    assert texts == pieces, "the rule responder calls no tools"
    return texts


def user(text: str) -> Message:
    return Message(role="user", text=text)


@pytest.mark.parametrize(
    ("said", "expected"),
    [
        ("Hello there", "How can I help you today?"),
        ("good morning", "How can I help you today?"),
        ("Where is my package? It was supposed to arrive Monday.", "order number"),
        ("what's the tracking status", "order number"),
        ("I want my money back", "refund"),
        ("hi, I would like a refund please", "refund"),  # the request beats the greeting
        ("can I talk to a real person", "transferring you"),
        ("I need a human agent about my refund", "transferring you"),  # agent beats refund
        ("thanks, that's all", "Thank you for calling"),
        ("okay bye", "Thank you for calling"),
    ],
)
async def test_reply_follows_the_keywords_of_the_request(said: str, expected: str) -> None:
    text = "".join(await reply([user(said)]))
    assert expected in text


async def test_fallback_echoes_the_start_of_what_was_heard() -> None:
    text = "".join(await reply([user("My toaster makes a strange whistling noise every morning")]))
    assert 'I heard "my toaster makes a strange whistling...".' in text


async def test_short_unrecognised_request_is_echoed_whole() -> None:
    text = "".join(await reply([user("blue sky")]))
    assert 'I heard "blue sky".' in text


async def test_reply_depends_on_the_last_user_message_only() -> None:
    history = [
        Message(role="system", text="You are a refund bot. Say hello."),
        user("I want a refund"),
        Message(role="assistant", text="I can help with a refund."),
        user("thank you"),
        Message(role="assistant", text="Bye", interrupted=True),
    ]
    text = "".join(await reply(history))
    assert "Thank you for calling" in text
    assert "refund" not in text


@pytest.mark.parametrize("history", [[], [Message(role="system", text="hi")], [user(" ?! ")]])
async def test_nothing_heard_asks_to_repeat(history: list[Message]) -> None:
    assert "".join(await reply(history)).strip() == "Sorry, I did not catch that. Could you say it again?"


async def test_reply_streams_word_by_word_with_trailing_spaces() -> None:
    pieces = await reply([user("where is my order")])
    assert len(pieces) > 5
    assert all(piece.endswith(" ") and " " not in piece[:-1] for piece in pieces)
    assert "".join(pieces) == RuleBasedResponder().reply_to([user("where is my order")]) + " "


async def test_replies_are_deterministic() -> None:
    history = [user("my parcel never came, what now?")]
    assert await reply(history) == await reply(history)


async def test_max_output_tokens_cuts_the_reply_in_words() -> None:
    pieces = await reply([user("hello")], SessionOptions(max_output_tokens=3))
    assert pieces == ["Hello, ", "thank ", "you "]


def test_every_reply_is_one_or_two_sentences() -> None:
    for rule in RULES:
        sentences = [s for s in re.split(r"[.?!]\s*", rule.reply) if s]
        assert 1 <= len(sentences) <= 2, rule.name


def test_documented_as_not_a_language_model() -> None:
    assert "not a language model" in (rule_responder.__doc__ or "")
    assert "not a language" in " ".join((RuleBasedResponder.__doc__ or "").split())


def test_unknown_option_is_rejected() -> None:
    with pytest.raises(BackendError, match="temperature"):
        load({"temperature": 0.5})
