"""Privacy: redaction rules, structured logs without speech content unless asked for, redacted
events for embedding code, and no audio or transcript written to disk. Speech recognition,
language model and speech synthesis are fakes (named as such)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.audio import PcmFrame
from server.events import (
    AgentEvent,
    AssistantTurn,
    Interrupted,
    SessionEnded,
    SessionStarted,
    ToolCalled,
    TurnLatency,
    UserTurn,
)
from server.http.app import create_app
from server.logs import JsonFormatter, TextFormatter, error_fields, resolve_log_format
from server.model.base import Message, SessionOptions
from server.model.cascade import CascadeModel
from server.model.fakes import EnergyClassifierFactory, FakeAsr, FakeLlm, FakeTts, tone
from server.privacy import (
    PrivacyOptions,
    luhn_valid,
    redact,
    redact_cards,
    redact_emails,
    redact_event,
    redact_phones,
)
from server.settings import Settings
from server.streaming.notifier import EventNotifier
from server.streaming.session_log import SessionLog
from tests.harness import realtime_client, running_server

# --- redaction rules ---------------------------------------------------------------------------

VISA = "4111 1111 1111 1111"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("my card is 4111 1111 1111 1111 thanks", "my card is [card] thanks"),
        ("card 4111-1111-1111-1111.", "card [card]."),
        ("4111111111111111", "[card]"),
        ("amex 3782 822463 10005", "amex [card]"),  # 15 digits, 4-6-5
        ("visa 4222222222222", "visa [card]"),  # 13 digits
        ("4111 1111 1111 1111 123", "[card] 123"),  # the card, then the security code
        ("expires 12 27, 4111 1111 1111 1111", "expires 12 27, [card]"),
        (
            "four one one one one one one one one one one one one one one one",
            "[card]",
        ),
        ("Four one, one one, one one one one, one one one one, one one one one", "[card]"),
        ("four one one one double one one one one triple one one one one one", "[card]"),
        ("it is four one one one 1111 1111 1111 okay", "it is [card] okay"),
    ],
)
def test_card_numbers_are_redacted(text: str, expected: str) -> None:
    assert redact_cards(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "order 1234 5678 9012 3456 please",  # 16 digits failing Luhn: an order number
        "order 1234567890123456",
        "order 1234-5678-9012-3456",
        "tracking 41111111111111111111111",  # 23 digits in one group: no card inside
        "in 2024 I paid 1,000,000 dollars, 3.14 each",
        "four one one one",
    ],
)
def test_numbers_failing_luhn_or_too_short_stay(text: str) -> None:
    assert not luhn_valid("1234567890123456")
    assert redact_cards(text) == text


def test_luhn() -> None:
    assert luhn_valid("4111111111111111") and luhn_valid("378282246310005") and luhn_valid("0")
    assert not luhn_valid("4111111111111112") and not luhn_valid("") and not luhn_valid("41x1")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("+14155552671", "[phone]"),
        ("call +1 (415) 555-2671 now", "call [phone] now"),
        ("+44 20 7946 0958", "[phone]"),
        ("(415) 555-2671", "[phone]"),
        ("415-555-2671", "[phone]"),
        ("415.555.2671", "[phone]"),
        ("1-800-555-1234", "[phone]"),
        ("call 555-1234", "call [phone]"),
        ("020 7946 0958", "[phone]"),
        ("06 12 34 56 78", "[phone]"),
        ("030/1234567", "[phone]"),
        ("0044 20 7946 0958", "[phone]"),
        ("415-555-2671, 415-555-9876", "[phone], [phone]"),
        ("plus four four two zero seven nine four six zero nine five eight", "[phone]"),
        ("it's five five five one two three four five six seven", "it's [phone]"),
        ("oh six one two three four five six seven eight", "[phone]"),
    ],
)
def test_phone_numbers_are_redacted(text: str, expected: str) -> None:
    assert redact_phones(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "order 12345678",
        "room 404 at 5 pm, 2 people",
        "one two three",
        "oh I see, one moment",
        "1,234,567,890 dollars",
        "ref 1234 5678 9012",
        "12 May 2024",
    ],
)
def test_other_numbers_are_no_phone_numbers(text: str) -> None:
    assert redact_phones(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail ada@example.com now", "mail [email] now"),
        ("Ada.Lovelace+orders@mail.example.co.uk.", "[email]."),
        ("john @ example.com", "[email]"),
        ("John at Example dot com", "[email]"),
        ("john dot smith at mail dot example dot co dot uk", "[email]"),
        ("email me at jane at gmail dot com please", "email me at [email] please"),
        ("jane underscore doe at example.org", "[email]"),
    ],
)
def test_emails_are_redacted(text: str, expected: str) -> None:
    assert redact_emails(text) == expected


@pytest.mark.parametrize(
    "text",
    ["look at example dot com", "I'm at home dot com", "we meet at noon. Then lunch", "at example.com"],
)
def test_sentences_with_at_are_no_emails(text: str) -> None:
    assert redact_emails(text) == text


def test_redact_applies_every_rule_and_keeps_the_rest() -> None:
    text = (
        "Card 4111 1111 1111 1111, call 415-555-2671 or mail a.b@example.com about order 1234 5678 9012 3456"
    )
    assert redact(text) == "Card [card], call [phone] or mail [email] about order 1234 5678 9012 3456"
    assert redact("an address with digits: a.4155552671@example.com") == "an address with digits: [email]"


def test_redact_event_changes_only_speech_text() -> None:
    user = UserTurn("sess_1", "item_1", f"my card is {VISA}")
    assert redact_event(user) == UserTurn("sess_1", "item_1", "my card is [card]")
    reply = AssistantTurn("sess_1", "item_2", "call 415-555-2671", "completed", False)
    assert redact_event(reply) == AssistantTurn("sess_1", "item_2", "call [phone]", "completed", False)
    started = SessionStarted("sess_1", {"caller": "+14155552671"})  # metadata: the embedder's own
    assert redact_event(started) is started
    latency = TurnLatency("sess_1", "item_2", 420.0)
    assert redact_event(latency) is latency


def test_redact_event_covers_tool_call_arguments_and_results() -> None:
    call = ToolCalled(
        "sess_1",
        "call_1",
        "find_order",
        {"card": VISA, "items": ["call 415-555-2671", 3]},
        '{"email": "ada@example.com"}',
        None,
        12.0,
        False,
    )
    redacted = redact_event(call)
    assert isinstance(redacted, ToolCalled)
    assert redacted.arguments == {"card": "[card]", "items": ["call [phone]", 3]}
    assert redacted.result == '{"email": "[email]"}' and redacted.name == "find_order"


# --- properties --------------------------------------------------------------------------------

_WORDS = [
    "my", "card", "is", "at", "dot", "com", "plus", "oh", "o", "one", "two", "four", "nine",
    "zero", "double", "triple", "call", "(", ")", "-", ".", ",", "+", "@", "/", "[card]",
    "example", "a.b", "x@y.z", "555", "1234", "0044", "4111", "7", "00",
]  # fmt: skip
_TOKENS = st.one_of(
    st.sampled_from(_WORDS),
    st.from_regex(r"\d{1,6}", fullmatch=True),
    st.text(alphabet="ab1+-.@ ()", max_size=4),
)
_SEPARATOR = st.sampled_from([" ", " ", "", "-", ", ", "."])


@st.composite
def _texts(draw: st.DrawFn) -> str:
    tokens = draw(st.lists(_TOKENS, max_size=40))
    return "".join(t + draw(_SEPARATOR) for t in tokens)


@settings(max_examples=400, deadline=None)
@given(_texts())
def test_redaction_is_idempotent(text: str) -> None:
    once = redact(text)
    assert redact(once) == once


_SPOKEN = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _luhn_complete(body: str) -> str:
    for check in "0123456789":
        if luhn_valid(body + check):
            return body + check
    raise AssertionError("unreachable: one check digit always fits")


@st.composite
def _cards(draw: st.DrawFn) -> tuple[str, str]:
    """A valid card number (13-19 digits) and how it was written or spoken."""
    body = draw(st.from_regex(r"[1-9][0-9]{11,17}", fullmatch=True))
    digits = _luhn_complete(body)
    style = draw(st.sampled_from(["plain", "spaced", "dashed", "spoken", "spoken-oh"]))
    if style == "plain":
        return digits, digits
    if style in ("spaced", "dashed"):
        sep = " " if style == "spaced" else "-"
        return digits, sep.join(digits[i : i + 4] for i in range(0, len(digits), 4))
    zero = "oh" if style == "spoken-oh" else "zero"
    return digits, " ".join(zero if d == "0" else _SPOKEN[int(d)] for d in digits)


_NEIGHBOURS = st.lists(
    st.one_of(
        st.sampled_from(["my", "card", "is", "at", "dot", "com", "plus", "call", "one", "nine", "(", ","]),
        st.from_regex(r"[0-9]{1,4}", fullmatch=True),
    ),
    max_size=6,
).map(" ".join)


def _digits_of(text: str) -> str:
    """The digits a reader would take from the text, spoken ones included."""
    out = []
    for word in text.replace("-", " ").replace(",", " ").split():
        if word.isdigit():
            out.append(word)
        elif word in _SPOKEN or word == "oh":
            out.append("0" if word == "oh" else str(_SPOKEN.index(word)))
        else:
            out.append("|")
    return "".join(out)


@settings(max_examples=400, deadline=None)
@given(_cards(), _NEIGHBOURS, _NEIGHBOURS)
def test_no_valid_card_survives(card: tuple[str, str], left: str, right: str) -> None:
    digits, written = card
    text = f"{left} {written} {right}"
    redacted = redact(text)
    assert written not in redacted
    assert digits not in _digits_of(redacted)


# --- the session log, formatters and error fields ----------------------------------------------


def _session_events() -> list[AgentEvent]:
    return [
        SessionStarted("sess_1", {"caller": "+14155552671"}),
        UserTurn("sess_1", "item_u1", f"my card is {VISA}"),
        TurnLatency("sess_1", "item_a1", 412.34, asr_final_ms=80.0, llm_first_token_ms=150.5),
        AssistantTurn("sess_1", "item_a1", "Thanks, card ending 1111 found.", "completed", False),
        UserTurn("sess_1", "item_u2", "and call me on 415-555-2671"),
        Interrupted("sess_1", "item_a2", 640),
        AssistantTurn("sess_1", "item_a2", "Sure, I will call", "cancelled", True),
        SessionEnded("sess_1"),
    ]


def _session_log_records(privacy: PrivacyOptions) -> list[logging.LogRecord]:
    logger = logging.getLogger("tests.privacy.session")
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        session_log = SessionLog(privacy, logger)
        for event in _session_events():
            session_log.record(redact_event(event) if privacy.redact_transcripts else event)
    finally:
        logger.removeHandler(handler)
    return records


def test_session_log_has_ids_and_latencies_but_no_speech_by_default() -> None:
    records = _session_log_records(PrivacyOptions())
    lines = [json.loads(JsonFormatter().format(r)) for r in records]
    assert [line["msg"] for line in lines] == [
        "session started",
        "user turn",
        "turn",
        "user turn",
        "turn",
        "session ended",
    ]
    assert all(line["session_id"] == "sess_1" for line in lines)
    assert lines[0]["metadata_keys"] == ["caller"] and "+1415" not in json.dumps(lines[0])
    first, second = lines[2], lines[4]
    assert first["turn_id"] == 1 and first["item_id"] == "item_a1" and first["user_item_id"] == "item_u1"
    assert first["voice_to_voice_ms"] == 412.3 and first["asr_final_ms"] == 80.0
    assert first["llm_first_token_ms"] == 150.5 and first["tts_first_audio_ms"] is None
    assert first["status"] == "completed" and first["reply_chars"] == len("Thanks, card ending 1111 found.")
    assert second["turn_id"] == 2 and second["interrupted"] and second["heard_ms"] == 640
    assert second["voice_to_voice_ms"] is None  # no audio was ever sent for it
    assert lines[5]["turns"] == 2
    dump = "\n".join(JsonFormatter().format(r) for r in records)
    for spoken in ("my card is", "4111", "415-555", "Thanks", "Sure"):
        assert spoken not in dump


def test_session_log_with_transcripts_and_with_redaction() -> None:
    plain = "\n".join(JsonFormatter().format(r) for r in _session_log_records(PrivacyOptions(True, False)))
    assert f"my card is {VISA}" in plain and "Sure, I will call" in plain
    redacted = "\n".join(JsonFormatter().format(r) for r in _session_log_records(PrivacyOptions(True, True)))
    assert "my card is [card]" in redacted and "and call me on [phone]" in redacted
    assert "4111 1111" not in redacted and "415-555" not in redacted


def _record(**extra: Any) -> logging.LogRecord:
    return logging.LogRecord("server.x", logging.WARNING, __file__, 1, "static message", None, None)


def test_json_formatter_writes_one_object_per_line_with_the_extra_fields() -> None:
    record = _record()
    record.session_id = "sess_1"
    record.latency_ms = 12.5
    record.path = Path("/x")  # not JSON: written as text
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["msg"] == "static message" and entry["level"] == "warning" and entry["logger"] == "server.x"
    assert entry["session_id"] == "sess_1" and entry["latency_ms"] == 12.5 and entry["path"] == "/x"
    assert entry["ts"].endswith("Z") and "T" in entry["ts"]
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(record))
    assert entry["exc_type"] == "ValueError" and "boom" in entry["exc"]


def test_text_formatter_appends_the_fields() -> None:
    record = _record()
    record.session_id = "sess_1"
    assert TextFormatter().format(record).endswith('server.x static message session_id="sess_1"')


def test_log_format_auto_is_text_on_a_terminal_and_json_elsewhere() -> None:
    assert resolve_log_format("auto", is_tty=True) == "text"
    assert resolve_log_format("auto", is_tty=False) == "json"
    assert resolve_log_format("text", is_tty=False) == "text"
    assert resolve_log_format("json", is_tty=True) == "json"


def test_configure_logging_sends_json_lines_to_stderr() -> None:
    code = (
        "import logging\n"
        "from server.logs import configure_logging\n"
        "configure_logging('info', 'json')\n"
        "logging.getLogger('server.session').info('turn', extra={'session_id': 's', 'turn_id': 1})\n"
        "logging.getLogger('server.session').debug('hidden')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(e["msg"], e["session_id"], e["turn_id"]) for e in lines] == [("turn", "s", 1)]


def test_error_fields_keep_foreign_messages_out() -> None:
    from server.errors import BackendError

    try:
        raise RuntimeError(f"no order for {VISA}")
    except RuntimeError as exc:
        fields = error_fields(exc, with_message=False)
        assert fields["error_type"] == "RuntimeError" and "test_privacy.py" in fields["error_at"]
        assert "error" not in fields and VISA not in json.dumps(fields)
        assert error_fields(exc, with_message=True)["error"] == f"no order for {VISA}"
    assert error_fields(BackendError("the model is gone"), with_message=False)["error"] == "the model is gone"


@pytest.mark.parametrize("log_transcripts", [False, True])
async def test_a_failing_handler_is_logged_without_what_it_quoted(
    log_transcripts: bool, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(event: AgentEvent) -> None:
        if isinstance(event, UserTurn):
            raise ValueError(f"cannot store {event.transcript!r}")

    caplog.set_level(logging.INFO, logger="server")
    notifier = EventNotifier(handler, privacy=PrivacyOptions(log_transcripts=log_transcripts))
    notifier.publish(UserTurn("sess_1", "item_1", f"my card is {VISA}"))
    await notifier.drain()
    failed = [r for r in caplog.records if r.getMessage() == "event handler failed"]
    assert len(failed) == 1 and failed[0].__dict__["error_type"] == "ValueError"
    assert (VISA in JsonFormatter().format(failed[0])) is log_transcripts


# --- sessions with fake models -----------------------------------------------------------------

SAID = f"my card is {VISA} and my email is ada@example.com"
REPLY = f"I found card {VISA} for ada@example.com."
SECRETS = (VISA, "ada@example.com", "my card is", "I found card")

_writes: list[str] | None = None  # files opened for writing while a test watches


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _writes is None or event != "open":
        return
    path, mode, flags = (tuple(args) + (None, None, None))[:3]
    writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
        mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
    )
    name = os.fsdecode(path) if isinstance(path, str | bytes) else str(path)
    if writing and "__pycache__" not in name:
        _writes.append(name)


_audit_installed = False


def _watch_writes() -> list[str]:
    global _writes, _audit_installed
    if not _audit_installed:  # an audit hook stays for the life of the process: install it once
        sys.addaudithook(_audit)
        _audit_installed = True
    _writes = []
    return _writes


def _stop_watching() -> None:
    global _writes
    _writes = None


async def _voice_session(
    caplog: pytest.LogCaptureFixture, llm: Any = None, **settings: object
) -> tuple[list[AgentEvent], list[logging.LogRecord], Any]:
    """One spoken turn and its reply; returns the events embedding code got, the server's log
    records (debug and up) and the language model (whose history shows what it was told)."""
    caplog.set_level(logging.DEBUG, logger="server")
    events: list[AgentEvent] = []
    ended = asyncio.Event()

    async def on_event(event: AgentEvent) -> None:
        events.append(event)
        if isinstance(event, SessionEnded):
            ended.set()

    model_llm = llm or FakeLlm([REPLY])
    model = CascadeModel(FakeAsr([SAID]), model_llm, FakeTts(ms_per_char=5.0))
    app = create_app(Settings(**settings), model=model, vad=EnergyClassifierFactory(), on_event=on_event)  # type: ignore[arg-type]
    async with running_server(app) as url:
        async with realtime_client(url) as client:
            await client.wait_for("session.created")
            await client.stream(tone(500), realtime=False)
            await client.stream(PcmFrame.silence(600, 24_000), realtime=False)
            await client.wait_for("response.done")
        await asyncio.wait_for(ended.wait(), 10)
    records = [r for r in caplog.records if r.name.startswith("server")]
    return events, records, model_llm


def _dump(records: list[logging.LogRecord]) -> str:
    formatter = JsonFormatter()
    return "\n".join(formatter.format(r) for r in records)


async def test_default_session_logs_turn_latencies_but_no_speech_and_writes_no_file(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    writes = _watch_writes()
    try:
        events, records, _ = await _voice_session(caplog)
    finally:
        _stop_watching()
    assert writes == []  # no audio, transcript or debug dump opened for writing, anywhere
    assert await asyncio.to_thread(os.listdir, tmp_path) == []
    dump = _dump(records)
    for secret in SECRETS:
        assert secret not in dump
    session_id = next(e.session_id for e in events if isinstance(e, SessionStarted))
    turns = [json.loads(JsonFormatter().format(r)) for r in records if r.getMessage() == "turn"]
    assert len(turns) == 1
    turn = turns[0]
    assert turn["session_id"] == session_id and turn["turn_id"] == 1 and turn["status"] == "completed"
    assert turn["voice_to_voice_ms"] > 0 and turn["asr_final_ms"] is not None
    assert turn["llm_first_token_ms"] is not None and turn["tts_first_audio_ms"] is not None
    user = next(e for e in events if isinstance(e, UserTurn))
    assert user.transcript == SAID  # embedding code gets the words unless redaction is on
    assert turn["user_item_id"] == user.item_id


async def test_session_logs_transcripts_when_enabled(caplog: pytest.LogCaptureFixture) -> None:
    _, records, _ = await _voice_session(caplog, log_transcripts=True)
    dump = _dump(records)
    assert SAID in dump and REPLY in dump


async def test_redaction_covers_events_and_logs_but_not_what_the_model_hears(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events, records, llm = await _voice_session(caplog, log_transcripts=True, redact_transcripts=True)
    user = next(e for e in events if isinstance(e, UserTurn))
    reply = next(e for e in events if isinstance(e, AssistantTurn))
    assert user.transcript == "my card is [card] and my email is [email]"
    assert reply.text == "I found card [card] for [email]."
    dump = _dump(records)
    assert "my card is [card] and my email is [email]" in dump
    assert VISA not in dump and "ada@example.com" not in dump
    assert [m.text for m in llm.calls[0] if m.role == "user"] == [SAID]  # the brain can look it up


class QuotingLlm:
    """A fake language model that fails quoting the caller, as embedding code might."""

    async def complete(self, history: Sequence[Message], options: SessionOptions) -> AsyncIterator[str]:
        raise RuntimeError(f"no order found for {history[-1].text!r}")
        yield ""  # an async generator


async def test_a_failing_brain_is_logged_without_what_the_caller_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, records, _ = await _voice_session(caplog, llm=QuotingLlm())
    failed = [r for r in records if r.getMessage() == "reply failed"]
    assert len(failed) == 1 and failed[0].__dict__["error_type"] == "RuntimeError"
    dump = _dump(records)
    for secret in SECRETS:
        assert secret not in dump
    turn = next(json.loads(JsonFormatter().format(r)) for r in records if r.getMessage() == "turn")
    assert turn["status"] == "failed"
