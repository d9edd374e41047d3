"""The specifics guard: which numbers, dates, phones, emails and URLs a phrase may state."""

from __future__ import annotations

import pytest

from server.knowledge.specifics import SpecificsGuard, find_specifics


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("Shipping to Canada is 100 dollars.", ["100"]),
        ("It's 5:00 PM.", ["5"]),
        ("please call me at 236-847-1508?", ["236", "847", "1508"]),
        ("Refunds take five working days.", ["5"]),
        ("It costs $12.50 or twenty five euros.", ["12.5", "25"]),
        ("two hundred and ten", ["210"]),
        ("my order is four eight two one three", ["4", "8", "2", "1", "3"]),
        ("It arrives on Monday, December 2nd.", ["2", "monday", "december"]),
        (
            "Write to help@shop.example.com or see www.shop.example.com/returns.",
            ["help@shop.example.com", "shop.example.com/returns"],
        ),
        ("I can connect you to one of our agents; you may call us today.", []),
        ("Hello, how can I help you?", []),
    ],
)
def test_specifics_found(text: str, values: list[str]) -> None:
    assert sorted(s.value for s in find_specifics(text)) == sorted(values)


def test_a_phrase_may_state_what_the_knowledge_or_the_caller_said() -> None:
    guard = SpecificsGuard(
        [
            "Shipping to Canada costs twelve dollars.",
            "my order number is four eight two one three",
            "Returns: see https://shop.example.com/returns/",
        ]
    )
    assert guard.unsupported("It costs $12.") == []  # values, not spellings
    assert guard.unsupported("Order 48213 has shipped.") == []  # the caller's digits, joined
    assert guard.unsupported("Order 4 8 2 1 3 has shipped.") == []
    assert guard.unsupported("See shop.example.com/returns.") == []
    assert guard.unsupported("Thanks, have a nice day!") == []
    assert [s.text for s in guard.unsupported("It costs 15 dollars and arrives Monday.")] == ["15", "Monday"]
    assert [s.text for s in guard.unsupported("Call 555-0100 or mail a@b.com")] == ["a@b.com", "555", "100"]


def test_learning_a_line_later() -> None:
    guard = SpecificsGuard([])
    assert guard.unsupported("It is 42.")
    guard.learn("the answer is forty two")
    assert guard.unsupported("It is 42.") == []
