"""The operator's knowledge file: a YAML list of answers and facts (pure: text in, data out).

    - q:                                  # one example question, or a list of them
        - how much is shipping to canada
        - what does delivery to canada cost
      a: Shipping to Canada costs twelve dollars and takes five to seven working days.
    - fact: Our phone line is open from 8 am to 8 pm, Monday to Saturday.

An entry with `q` and `a` is an answer the agent may speak as it is written when a caller's
words match one of its questions; a `fact` is free text the language model may be given,
never spoken verbatim. Every number, date, phone number, email and URL in the file is
"known" to the specifics guard (specifics.py).

Invariants: a parsed `Knowledge` has at least one entry or fact, every answer and question is
non-empty single-spaced text, and each item remembers its line in the file. Anything else is
a `KnowledgeFileError` whose message names the file and the line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MAX_FILE_BYTES = 4 * 1024 * 1024  # a knowledge file is read whole and embedded at start
_ENTRY_KEYS = frozenset({"q", "a"})
_FACT_KEYS = frozenset({"fact"})
_TEXT_TAGS = frozenset({"tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"})


class KnowledgeFileError(ValueError):
    """A knowledge file that cannot be used; the message names the file and the line."""


@dataclass(frozen=True, slots=True)
class KnowledgeEntry:
    """An operator's answer: `questions` a caller may ask it with, `answer` to speak."""

    questions: tuple[str, ...]
    answer: str
    line: int  # 1-based, in the file it came from


@dataclass(frozen=True, slots=True)
class Fact:
    text: str
    line: int


@dataclass(frozen=True, slots=True)
class Knowledge:
    """What the operator told the agent. `source` names where it came from (a path, or
    "<session>" for one given in code)."""

    entries: tuple[KnowledgeEntry, ...]
    facts: tuple[Fact, ...] = ()
    source: str = "<session>"

    @property
    def text(self) -> str:
        """Every answer, question and fact, one per line (what the guard may quote)."""
        lines = [q for e in self.entries for q in e.questions]
        lines += [e.answer for e in self.entries]
        lines += [f.text for f in self.facts]
        return "\n".join(lines)


def load_knowledge_file(path: Path) -> Knowledge:
    """Read and parse a knowledge file. Raises KnowledgeFileError naming the path (and the
    line, for a bad entry) when it is missing, unreadable, too big or malformed."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise KnowledgeFileError(
                f"{path}: {size} bytes; a knowledge file may hold at most {MAX_FILE_BYTES}"
            )
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise KnowledgeFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise KnowledgeFileError(f"{path}: cannot read the knowledge file ({exc.strerror or exc})") from exc
    return parse_knowledge(text, source=str(path))


def parse_knowledge(text: str, source: str = "<session>") -> Knowledge:
    """Parse the YAML text of a knowledge file (module docstring)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}" if mark is not None else "somewhere"
        raise KnowledgeFileError(f"{source}, {where}: not valid YAML: {exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise KnowledgeFileError(f"{source}: not valid YAML: {exc}") from exc
    if root is None:
        raise KnowledgeFileError(f"{source}: the knowledge file is empty; it needs a list of entries")
    if not isinstance(root, yaml.SequenceNode):
        raise KnowledgeFileError(
            f"{source}, line {_line(root)}: the knowledge file must be a YAML list of entries"
            " (- q: ... / a: ..., or - fact: ...)"
        )
    entries: list[KnowledgeEntry] = []
    facts: list[Fact] = []
    for item in root.value:
        where = f"{source}, line {_line(item)}"
        if not isinstance(item, yaml.MappingNode):
            raise KnowledgeFileError(f"{where}: an entry must be a mapping with q and a, or with fact")
        fields = _mapping(item, where)
        keys = frozenset(fields)
        if keys == _FACT_KEYS:
            facts.append(Fact(_text(fields["fact"], source, "fact"), _line(item)))
        elif keys == _ENTRY_KEYS:
            questions = _questions(fields["q"], source)
            answer = _text(fields["a"], source, "a (the answer)")
            entries.append(KnowledgeEntry(questions, answer, _line(item)))
        else:
            unknown = sorted(keys - _ENTRY_KEYS - _FACT_KEYS)
            if unknown:
                problem = f"unknown key {', '.join(map(repr, unknown))}"
            elif "fact" in keys:
                problem = "fact cannot be combined with q or a (make it an entry of its own)"
            else:
                problem = f"missing {'a (the answer)' if 'q' in keys else 'q (example questions)'}"
            raise KnowledgeFileError(f"{where}: {problem}; an entry has q and a, or only fact")
    if not entries and not facts:
        raise KnowledgeFileError(f"{source}: the knowledge file has no entries")
    return Knowledge(tuple(entries), tuple(facts), source)


def knowledge_from_items(items: Sequence[Mapping[str, Any]], source: str = "<session>") -> Knowledge:
    """The same structure given in code (a list of {"q": ..., "a": ...} / {"fact": ...}
    dicts), checked by the same rules: dumped to YAML and parsed, so an error names the
    item's line in that dump."""
    return parse_knowledge(yaml.safe_dump(list(items), sort_keys=False, allow_unicode=True), source)


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _mapping(node: yaml.MappingNode, where: str) -> dict[str, yaml.Node]:
    fields: dict[str, yaml.Node] = {}
    for key, value in node.value:
        if not isinstance(key, yaml.ScalarNode):
            raise KnowledgeFileError(f"{where}: keys must be plain words (q, a, fact)")
        name = str(key.value)
        if name in fields:
            raise KnowledgeFileError(f"{where}: key {name!r} appears twice")
        fields[name] = value
    return fields


def _text(node: yaml.Node, source: str, field: str) -> str:
    """A scalar's text, single-spaced; numbers are taken as written."""
    where = f"{source}, line {_line(node)}"
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
        raise KnowledgeFileError(f"{where}: {field} is empty")
    if not isinstance(node, yaml.ScalarNode) or node.tag not in _TEXT_TAGS:
        raise KnowledgeFileError(f"{where}: {field} must be text")
    text = " ".join(str(node.value).split())
    if not text:
        raise KnowledgeFileError(f"{where}: {field} is empty")
    return text


def _questions(node: yaml.Node, source: str) -> tuple[str, ...]:
    if isinstance(node, yaml.SequenceNode):
        if not node.value:
            raise KnowledgeFileError(f"{source}, line {_line(node)}: q has no questions")
        return tuple(_text(q, source, "q") for q in node.value)
    return (_text(node, source, "q"),)
