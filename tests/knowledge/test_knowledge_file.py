"""The knowledge file: what parses, and errors that name the file and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.knowledge.knowledge import (
    KnowledgeFileError,
    knowledge_from_items,
    load_knowledge_file,
    parse_knowledge,
)

GOOD = """\
# a comment
- q:
    - how much is shipping to canada
    - do you ship to canada
  a: Shipping to Canada costs twelve dollars.
- q: when are you open
  a: >
    From eight to eight,
    Monday to Saturday.
- fact: Orders before 2 pm ship the same day.
"""


def test_entries_facts_and_their_lines() -> None:
    knowledge = parse_knowledge(GOOD, source="shop.yaml")
    first, second = knowledge.entries
    assert first.questions == ("how much is shipping to canada", "do you ship to canada")
    assert first.answer == "Shipping to Canada costs twelve dollars." and first.line == 2
    assert second.questions == ("when are you open",)
    assert second.answer == "From eight to eight, Monday to Saturday." and second.line == 6
    assert [(f.text, f.line) for f in knowledge.facts] == [("Orders before 2 pm ship the same day.", 10)]
    assert "twelve dollars" in knowledge.text and "2 pm" in knowledge.text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- q: a\n  a: b\n- q: c\n", "shop.yaml, line 3: missing a (the answer)"),
        ("- q: a\n  a: b\n- a: c\n", "shop.yaml, line 3: missing q (example questions)"),
        ("- q: a\n  a:\n", "shop.yaml, line 2: a (the answer) is empty"),
        ("- q: []\n  a: b\n", "shop.yaml, line 1: q has no questions"),
        ("- q: a\n  a: [b]\n", "shop.yaml, line 2: a (the answer) must be text"),
        ("- q: a\n  a: b\n  answer: c\n", "shop.yaml, line 1: unknown key 'answer'"),
        ("- q: a\n  a: b\n  fact: c\n", "shop.yaml, line 1: fact cannot be combined with q or a"),
        ("- q: a\n  q: b\n  a: c\n", "shop.yaml, line 1: key 'q' appears twice"),
        ("- q: a\n  a: b\n- just text\n", "shop.yaml, line 3: an entry must be a mapping"),
        ("q: a\na: b\n", "shop.yaml, line 1: the knowledge file must be a YAML list"),
        ("- q: [a\n  a: b\n", "shop.yaml, line 2: not valid YAML"),
        ("", "shop.yaml: the knowledge file is empty"),
        ("[]\n", "shop.yaml: the knowledge file has no entries"),
    ],
)
def test_a_malformed_file_names_the_line(text: str, message: str) -> None:
    with pytest.raises(KnowledgeFileError) as caught:
        parse_knowledge(text, source="shop.yaml")
    assert str(caught.value).startswith(message)


def test_files_missing_or_not_text(tmp_path: Path) -> None:
    with pytest.raises(KnowledgeFileError, match="cannot read the knowledge file"):
        load_knowledge_file(tmp_path / "missing.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe- q: a\n")
    with pytest.raises(KnowledgeFileError, match="not UTF-8"):
        load_knowledge_file(binary)
    good = tmp_path / "shop.yaml"
    good.write_text(GOOD)
    assert load_knowledge_file(good).source == str(good)


def test_knowledge_given_in_code_is_checked_the_same_way() -> None:
    knowledge = knowledge_from_items([{"q": ["hi", "hello"], "a": "Hello!"}, {"fact": "We sell lamps."}])
    assert knowledge.entries[0].questions == ("hi", "hello") and knowledge.facts[0].text == "We sell lamps."
    with pytest.raises(KnowledgeFileError, match="missing a"):
        knowledge_from_items([{"q": "hi"}])


def test_the_example_knowledge_file_parses() -> None:
    path = Path(__file__).resolve().parents[2] / "examples" / "customer_service" / "knowledge.yaml"
    knowledge = load_knowledge_file(path)
    assert len(knowledge.entries) >= 10 and knowledge.facts
