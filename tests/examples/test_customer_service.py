"""The customer-service example (examples/customer_service): the number parser, intents and
dialogue, the refund rules over a temporary SQLite database, the backend's routes, a typed
conversation over the websocket (fake speech: named as such), and a spoken one (slow: flite
speaks the caller, the fast profile's pocketsphinx hears it)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from examples.customer_service.__main__ import main as desk_main
from examples.customer_service.app import DeskSettings, create_desk_app
from examples.customer_service.brain import desk_brain, user_turns
from examples.customer_service.call import CallContext, current_call, normalize_phone
from examples.customer_service.call_log import CallLog, log_row
from examples.customer_service.desk import SupportDesk
from examples.customer_service.dialogue import (
    Awaiting,
    CallTool,
    DialogueMemory,
    DialogueState,
    Intent,
    Purpose,
    Say,
    after_tool,
    hear,
    opening,
    respond,
)
from examples.customer_service.phrasing import spoken_amount, spoken_date
from examples.customer_service.policy import refund_decision
from examples.customer_service.results import OrderStatus, RefundOutcome, Transfer
from examples.customer_service.spoken_numbers import digit_runs, order_number, spoken_digits
from examples.customer_service.store import RefundExists, SupportStore
from server import (
    AssistantTurn,
    BrainRequest,
    Interrupted,
    Message,
    SessionEnded,
    SessionStarted,
    Settings,
    TurnLatency,
    UserTurn,
)
from server.audio import PcmFrame
from server.events import ToolCalled
from server.model import registry
from server.model.fakes import EnergyClassifierFactory, FakeTts, tone
from server.model.tool_calls import ToolResult
from server.vad.detector import ClassifierFactory
from tests.harness import RealtimeTestClient, decode_audio_deltas, realtime_client, running_server
from tests.model.scripted_http import Request, scripted_server
from tests.model.test_openai_llm import (
    arguments_fragment,
    chunk_event,
    first_fragment,
    streaming,
    tool_call_event,
)
from tests.telephony.twilio_caller import twilio_call

NOW = datetime(2026, 11, 30, 15, 0, tzinfo=UTC)
TODAY = NOW.date()
ADA = "+15550100001"


def fixed_clock() -> datetime:
    return NOW


# --- spoken numbers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("order one two three four", "1234"),
        ("order twelve thirty four", "1234"),
        ("1234", "1234"),
        ("my order is 1234.", "1234"),
        ("order 12 34", "1234"),
        ("one thousand two hundred thirty four", "1234"),
        ("twelve hundred and thirty four", "1234"),
        ("nineteen oh five", "1905"),
        ("thirty oh five", "3005"),
        ("double five one two", "5512"),
        ("twenty three forty five", "2345"),
        ("fifty six seventy eight", "5678"),
        ("twenty-three forty-five", "2345"),
        # recogniser homophones: "to" for two, "for" for four, at an edge or inside a run
        ("one to three four", "1234"),
        ("one two three for", "1234"),
        ("refund for one two three four", "1234"),
        ("won two three four", "1234"),
    ],
)
def test_order_number_reads_numbers_as_a_recogniser_writes_them(text: str, expected: str) -> None:
    assert order_number(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "where is my order",
        "I want to talk to a person",  # "to" alone is not a number
        "oh no",
        "one two three",  # three digits
        "one two three four five six",  # six digits
        "twenty one",
        "",
    ],
)
def test_order_number_is_none_without_four_digits(text: str) -> None:
    assert order_number(text) is None


def test_digit_runs_lists_every_number_in_order() -> None:
    assert digit_runs("order one two three and then twenty one and 99") == ["123", "21", "99"]
    assert digit_runs("I want to go for it") == []


def test_spoken_digits_reads_digit_by_digit() -> None:
    assert spoken_digits("1204") == "one two oh four"


# --- intents and dialogue ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("where is my order", Intent.ORDER_STATUS),
        ("i would like a refund please", Intent.REFUND),
        ("can i talk to a human agent please", Intent.HUMAN),
        ("yes please", Intent.YES),
        ("no", Intent.NO),
        ("thank you goodbye", Intent.GOODBYE),
        ("hello", Intent.GREETING),
    ],
)
def test_hear_finds_the_intent(text: str, intent: Intent) -> None:
    assert intent in hear(text).intents


def test_hear_is_not_fooled_by_substrings() -> None:
    assert hear("nothing to know here").intents == frozenset()  # "no" inside "nothing"/"know"


def test_order_status_asks_for_the_number_then_looks_it_up() -> None:
    first = respond(DialogueState(), "where is my order")
    assert isinstance(first, Say) and "order number" in first.text
    assert first.state.awaiting is Awaiting.ORDER_FOR_STATUS
    second = respond(first.state, "twelve thirty four")
    assert second == CallTool("order_status", {"order_id": "1234"}, Purpose.STATUS, DialogueState())


def test_a_number_of_the_wrong_length_is_read_back_and_asked_again() -> None:
    step = respond(DialogueState(Awaiting.ORDER_FOR_STATUS), "one two three")
    assert isinstance(step, Say)
    assert "I heard one two three" in step.text and step.state.awaiting is Awaiting.ORDER_FOR_STATUS


def test_refund_fills_the_order_slot_checks_it_and_confirms_before_refunding() -> None:
    ask = respond(DialogueState(), "i would like a refund please")
    assert isinstance(ask, Say) and ask.state == DialogueState(
        Awaiting.ORDER_FOR_REFUND, reason="i would like a refund please"
    )
    check = respond(ask.state, "order two three four five")
    assert (
        isinstance(check, CallTool) and check.name == "order_status" and check.purpose is Purpose.REFUND_CHECK
    )
    status = OrderStatus(
        "2345", True, "...", status="delivered", amount_cents=8900, refundable=True, refund_offer="Shall I?"
    )
    offer = after_tool(check, status)
    assert offer == Say(
        "Shall I?", DialogueState(Awaiting.REFUND_CONFIRMATION, "2345", "i would like a refund please")
    )
    unclear = respond(offer.state, "hmm")
    assert isinstance(unclear, Say) and "yes or a no" in unclear.text
    assert unclear.state.awaiting is Awaiting.REFUND_CONFIRMATION
    refund = respond(unclear.state, "yes")
    assert refund == CallTool(
        "request_refund",
        {"order_id": "2345", "reason": "i would like a refund please"},
        Purpose.REFUND,
        DialogueState(),
    )
    done = after_tool(refund, RefundOutcome("2345", True, "Done.", 8900))
    assert done.text.startswith("Done.") and done.state == DialogueState()


def test_declining_the_refund_calls_no_tool() -> None:
    step = respond(DialogueState(Awaiting.REFUND_CONFIRMATION, "2345", "broken"), "no thanks")
    assert isinstance(step, Say) and "won't refund" in step.text and step.state == DialogueState()


def test_an_order_that_cannot_be_refunded_is_not_offered() -> None:
    check = respond(DialogueState(), "refund order 3456")
    assert isinstance(check, CallTool)
    status = OrderStatus("3456", True, "...", status="processing", refund_offer="It hasn't shipped yet.")
    step = after_tool(check, status)
    assert step.text.startswith("It hasn't shipped yet.") and step.state == DialogueState()


def test_asking_for_a_person_wins_over_everything() -> None:
    step = respond(DialogueState(Awaiting.REFUND_CONFIRMATION, "2345", "x"), "no just get me a human")
    assert isinstance(step, CallTool) and step.name == "transfer_to_human"
    said = after_tool(step, Transfer(7, 1, "I'm transferring you."))
    assert said == Say("I'm transferring you.", DialogueState())


def test_a_failed_tool_call_is_said_plainly() -> None:
    step = respond(DialogueState(), "where is order 1234")
    assert isinstance(step, CallTool)
    assert "isn't answering" in after_tool(step, None).text


def test_yes_or_no_to_anything_else() -> None:
    no = respond(DialogueState(), "no thank you")
    assert isinstance(no, Say) and "goodbye" in no.text
    yes = respond(DialogueState(), "yes")
    assert isinstance(yes, Say) and "Which would you like?" in yes.text


def test_greeting_uses_the_callers_first_name() -> None:
    step = respond(DialogueState(), "hello", "Ada Lovelace")
    assert isinstance(step, Say) and step.text.startswith("Hi Ada!")
    assert opening("Ada Lovelace").startswith("Thanks for calling, Ada. I can check on an order")
    assert opening(None).startswith("Thanks for calling. I can check on an order")


def test_not_understood_turns_are_counted() -> None:
    first = respond(DialogueState(), "purple elephants")
    assert isinstance(first, Say) and first.state.misses == 1
    second = respond(first.state, "purple elephants")
    assert isinstance(second, Say) and "still" in second.text


def test_user_turns_joins_consecutive_user_messages_and_splits_off_the_current_turn() -> None:
    history = [
        Message("user", "where is my order"),
        Message("assistant", "What's the order number?", interrupted=True),
        Message("user", "twelve"),
        Message("user", "thirty four"),
    ]
    assert user_turns(history) == (("where is my order",), "twelve thirty four")
    assert user_turns([Message("user", "hi"), Message("assistant", "hello")]) == (("hi",), "")


def test_dialogue_memory_survives_a_reply_that_was_thrown_away() -> None:
    """A reply prepared for "where is my" (then abandoned: the caller went on) must not
    change the state the real turn starts from."""
    memory = DialogueMemory()
    memory.remember(("where is my order",), DialogueState(Awaiting.ORDER_FOR_STATUS))
    memory.remember(("where is my order", "twelve"), DialogueState())  # the abandoned guess
    assert memory.before(("where is my order",)) == DialogueState(Awaiting.ORDER_FOR_STATUS)


# --- money, dates, phones, refund rules ----------------------------------------------------------


def test_spoken_amount_and_date() -> None:
    assert spoken_amount(5990) == "59 dollars and 90 cents"
    assert spoken_amount(2000) == "20 dollars"
    assert spoken_amount(101) == "1 dollar and 1 cent"
    assert spoken_date(date(2026, 12, 1), TODAY) == "tomorrow"
    assert spoken_date(date(2026, 12, 2), TODAY) == "Wednesday, December 2nd"
    assert spoken_date(date(2026, 12, 11), TODAY) == "Friday, December 11th"


def test_normalize_phone() -> None:
    assert normalize_phone("+1 555 010 0001") == ADA
    assert normalize_phone(" 15550100001") == ADA  # '+' decoded as a space from a query string
    assert normalize_phone("5550100001") == ADA
    assert normalize_phone("anonymous") == ""


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SupportStore]:
    store = SupportStore(tmp_path / "desk" / "support.db")
    assert store.create(TODAY) is True
    yield store
    store.close()


def test_the_database_is_seeded_once(store: SupportStore) -> None:
    assert store.create(TODAY) is False
    store.close()  # and again from the file, by a new connection
    assert store.create(TODAY) is False
    order = store.order("1234")
    assert order is not None and order.status == "shipped" and order.carrier == "UPS"
    assert order.eta == date(2026, 12, 2)
    customer = store.customer_by_phone(ADA)
    assert customer is not None and customer.name == "Ada Lovelace"
    assert store.order("0000") is None


def test_refund_rules(store: SupportStore) -> None:
    def decide(order_id: str) -> tuple[bool, int, str | None]:
        d = refund_decision(order_id, store.order(order_id), store.refund_for(order_id))
        return d.allowed, d.amount_cents, d.refusal

    assert decide("2345") == (True, 8900, None)  # delivered
    assert decide("1234") == (True, 5990, None)  # shipped
    assert decide("3456") == (False, 0, "not_shipped")  # processing
    assert decide("4567") == (False, 0, "cancelled")
    assert decide("9999") == (False, 0, "not_found")
    store.add_refund("2345", 8900, "broken", None, NOW)
    assert decide("2345") == (False, 0, "already_refunded")


def test_the_database_refuses_a_second_refund(store: SupportStore) -> None:
    store.add_refund("2345", 8900, "broken", "call-1", NOW)
    with pytest.raises(RefundExists):
        store.add_refund("2345", 8900, "again", "call-2", NOW)
    assert [(r.order_id, r.call_id) for r in store.refunds()] == [("2345", "call-1")]


async def test_request_refund_writes_one_row_with_the_orders_amount_and_the_call(store: SupportStore) -> None:
    desk = SupportDesk(store, fixed_clock)
    current_call.set(CallContext("call-7", ADA, store.customer_by_phone(ADA)))
    first = await desk.request_refund("two three four five", "it broke")
    assert first.refunded and first.amount_cents == 8900 and "89 dollars" in first.say
    again = await desk.request_refund("2345", "it broke")
    assert not again.refunded and again.refusal == "already_refunded"
    processing = await desk.request_refund("3456", "changed my mind")
    assert not processing.refunded and processing.refusal == "not_shipped"
    bad = await desk.request_refund("12", "x")
    assert bad.refusal == "invalid_order_id" and "four digits" in bad.say
    refunds = store.refunds()
    assert [(r.order_id, r.amount_cents, r.reason, r.call_id) for r in refunds] == [
        ("2345", 8900, "it broke", "call-7")
    ]


async def test_two_concurrent_refunds_of_one_order_record_one(store: SupportStore) -> None:
    desk = SupportDesk(store, fixed_clock)
    outcomes = await asyncio.gather(*(desk.request_refund("5678", "dup") for _ in range(4)))
    assert sum(o.refunded for o in outcomes) == 1
    assert len(store.refunds()) == 1


async def test_transfer_queues_a_handoff(store: SupportStore) -> None:
    desk = SupportDesk(store, fixed_clock)
    current_call.set(CallContext("call-1", ADA, store.customer_by_phone(ADA)))
    first = await desk.transfer_to_human("wants a person")
    second = await desk.transfer_to_human("also")
    assert (first.queue_position, second.queue_position) == (1, 2)
    assert "next in line" in first.say and "1 caller ahead" in second.say
    handoffs = store.handoffs()
    assert [(h.call_id, h.customer_id, h.status) for h in handoffs] == [("call-1", 1, "waiting")] * 2


async def test_order_status_reports_refund_eligibility(store: SupportStore) -> None:
    desk = SupportDesk(store, fixed_clock)
    shipped = await desk.order_status("1234")
    assert shipped.found and shipped.refundable and shipped.amount_cents == 5990
    assert shipped.say == (
        "Order one two three four, the wireless headphones, has shipped with UPS and should arrive"
        " on Wednesday, December 2nd."
    )
    missing = await desk.order_status("9999")
    assert not missing.found and missing.say == "I couldn't find an order nine nine nine nine."


class SlowFirstWriteStore:
    """A store whose first call-log write takes 200 ms (a busy disk); it keeps the kinds in
    the order their writes finished."""

    def __init__(self) -> None:
        self.kinds: list[str] = []

    def add_call_log(self, session_id: str, at: datetime, kind: str, *args: object) -> None:
        if not self.kinds and kind == "tool_called":
            time.sleep(0.2)
        self.kinds.append(kind)


async def test_a_call_log_write_the_notifier_gave_up_on_is_not_overtaken() -> None:
    """The notifier stops waiting for a handler after its time bound; the write it gave up
    on still runs, and the session's next row must not land before it (CI, a busy machine:
    a tool call's row written after session_ended, and the test reading the log missed it)."""
    store = SlowFirstWriteStore()
    call_log = CallLog(store, lambda: datetime(2026, 12, 6, tzinfo=UTC))  # type: ignore[arg-type]
    tool = ToolCalled("s", "c1", "order_status", {"order_id": "1234"}, '{"found": true}', None, 3.21, False)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.02):
            await call_log.record(tool)
    await call_log.record(SessionEnded("s"))
    await asyncio.to_thread(call_log.close)
    assert store.kinds == ["tool_called", "session_ended"]


def test_every_event_becomes_a_call_log_row() -> None:
    tool = ToolCalled("s", "c1", "order_status", {"order_id": "1234"}, '{"found": true}', None, 3.21, False)
    rows = [
        log_row(SessionStarted("s", {"caller": ADA})),
        log_row(UserTurn("s", "i1", "where is my order")),
        log_row(AssistantTurn("s", "i2", "Sure.", "completed", False)),
        log_row(Interrupted("s", "i2", 640)),
        log_row(TurnLatency("s", "i2", 812.345)),
        log_row(tool),
        log_row(SessionEnded("s")),
    ]
    assert [r.kind for r in rows] == [
        "session_started",
        "user_turn",
        "assistant_turn",
        "interrupted",
        "turn_latency",
        "tool_called",
        "session_ended",
    ]
    assert rows[1].text == "where is my order"
    assert rows[4].detail == {"voice_to_voice_ms": 812.3}
    assert rows[5].text == "order_status" and rows[5].detail is not None
    assert rows[5].detail["arguments"] == {"order_id": "1234"}


async def test_the_brain_calls_tools_through_the_request() -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    class Runner:
        async def call(self, name: str, arguments: Any, say: Any = None, call_id: str = "") -> ToolResult:
            calls.append((name, dict(arguments)))
            value = OrderStatus("1234", True, "Order one two three four has shipped.", status="shipped")
            return ToolResult(name, "{}", value=value)

    current_call.set(CallContext("call-1", ADA, None))
    request = BrainRequest(
        (Message("user", "where is my order twelve thirty four"),),
        "",
        {},
        tools=Runner(),  # type: ignore[arg-type]
    )
    reply = "".join([piece async for piece in desk_brain(request)])
    assert calls == [("order_status", {"order_id": "1234"})]
    assert reply.startswith("Order one two three four has shipped.")


# --- the backend, over HTTP and the websocket -------------------------------------------------------


@pytest.fixture
def fake_speech(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.ASR_BACKENDS, "fake-asr", "server.model.fakes:load_fake_asr")
    monkeypatch.setitem(
        registry.TTS_BACKENDS, "quick-fake-tts", "tests.examples.test_customer_service:quick_fake_tts"
    )


def quick_fake_tts(options: object = None) -> FakeTts:
    """The fake's tone, 5 ms per character: a reply plays out in well under a second."""
    return FakeTts(ms_per_char=5.0)


def desk_app(
    tmp_path: Path, vad: ClassifierFactory | None = None, *, greet: bool = False, **voice: Any
) -> FastAPI:
    """The desk on FAKE models; `greet` off unless asked: the dialogue tests type the first word."""
    return create_desk_app(
        DeskSettings(db=tmp_path / "support.db", greet=greet),
        Settings(**voice),
        vad=vad or EnergyClassifierFactory(),
        clock=fixed_clock,
    )


@pytest.fixture
async def fake_desk(tmp_path: Path, fake_speech: None) -> AsyncIterator[str]:
    async with running_server(desk_app(tmp_path, asr="fake-asr", tts="quick-fake-tts")) as url:
        yield url


async def test_backend_routes(fake_desk: str) -> None:
    async with httpx.AsyncClient(base_url=fake_desk) as http:
        order = (await http.get("/orders/1234")).json()
        assert order["status"] == "shipped" and order["eta"] == "2026-12-02"
        assert (await http.get("/orders/9999")).status_code == 404
        assert (await http.get("/orders/12")).status_code == 422
        assert (await http.get("/calls", params={"limit": 0})).status_code == 422
        assert (await http.get("/calls/nobody")).status_code == 404
        assert (await http.get("/refunds")).json() == []
        assert (await http.get("/voice/healthz")).json()["status"] == "ok"
        page = await http.get("/", follow_redirects=True)
        assert page.status_code == 200 and str(page.url).endswith("/voice/")


def test_main_refuses_a_database_it_cannot_create(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert desk_main(["--db", str(blocker / "support.db")]) == 2
    assert "cannot open the database" in capsys.readouterr().err


def test_main_refuses_bad_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert desk_main(["--port", "70000"]) == 2
    assert "invalid settings" in capsys.readouterr().err


async def say(client: RealtimeTestClient, text: str) -> str:
    """Type a user message and ask for a reply; the spoken transcript of the reply."""
    after = len(client.events)
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    await client.send({"type": "conversation.item.create", "item": item})
    await client.send({"type": "response.create"})
    done = await client.wait_for("response.done", after=after)
    assert done["response"]["status"] == "completed", done
    return _transcript(client, after)


def _transcript(client: RealtimeTestClient, after: int) -> str:
    events = [e for e in client.events[after:] if e["type"] == "response.output_audio_transcript.done"]
    assert len(events) == 1
    return str(events[0]["transcript"])


async def call_log_of(url: str, session_id: str) -> list[dict[str, Any]]:
    """The session's call-log rows, once its session_ended row is written."""
    async with httpx.AsyncClient(base_url=url) as http:
        for _ in range(200):
            response = await http.get(f"/calls/{session_id}")
            rows: list[dict[str, Any]] = response.json() if response.status_code == 200 else []
            if rows and rows[-1]["kind"] == "session_ended":
                return rows
            await asyncio.sleep(0.05)
    raise AssertionError(f"no session_ended row for {session_id}")


async def test_typed_conversation_refunds_an_order_and_logs_the_call(fake_desk: str) -> None:
    async with realtime_client(fake_desk, path=f"/voice/v1/realtime?caller=%2B{ADA[1:]}") as client:
        created = await client.wait_for("session.created")
        session_id = created["session"]["id"]
        assert (await say(client, "hello")).startswith("Hi Ada!")
        offer = await say(client, "I want a refund for order two three four five, the grinder broke")
        assert "89 dollars" in offer and "yes or no" in offer
        done = await say(client, "yes please")
        assert done.startswith("Done. 89 dollars for order two three four five")
        assert len(decode_audio_deltas(client.of_type("response.output_audio.delta"))) > 0
        again = await say(client, "refund order 2345 again")
        assert "already been refunded" in again

    async with httpx.AsyncClient(base_url=fake_desk) as http:
        refunds = (await http.get("/refunds")).json()
    rows = await call_log_of(fake_desk, session_id)
    started = rows[0]
    assert started["kind"] == "session_started" and started["detail"]["customer_name"] == "Ada Lovelace"
    assert [(r["order_id"], r["amount_cents"], r["call_id"]) for r in refunds] == [
        ("2345", 8900, started["detail"]["call_id"])
    ]
    tools = [(r["text"], r["detail"]["arguments"]) for r in rows if r["kind"] == "tool_called"]
    assert tools == [
        ("order_status", {"order_id": "2345"}),
        (
            "request_refund",
            {
                "order_id": "2345",
                "reason": "I want a refund for order two three four five, the grinder broke",
            },
        ),
        ("order_status", {"order_id": "2345"}),
    ]
    result = json.loads(next(r for r in rows if r["text"] == "request_refund")["detail"]["result"])
    assert result["refunded"] is True and result["amount_cents"] == 8900
    assert [r["text"] for r in rows if r["kind"] == "assistant_turn"][2].startswith("Done.")


@pytest.mark.slow  # the shipped sentence encoder indexes the desk's knowledge
async def test_the_desks_knowledge_answers_before_the_dialogue_manager(fake_desk: str) -> None:
    async with realtime_client(fake_desk, path=f"/voice/v1/realtime?caller=%2B{ADA[1:]}") as client:
        await client.wait_for("session.created")
        shipping = await say(client, "how much does it cost to ship to canada")
        assert shipping.startswith("Yes, we ship to Canada. Shipping there costs twelve dollars")
        done = client.of_type("response.done")[-1]
        assert done["response"]["metadata"] == {"voxgate_answer_path": "knowledge"}
        # the desk's own business stays with its dialogue manager
        assert "order number" in (await say(client, "where is my order")).lower()
        path = client.of_type("response.done")[-1]["response"]["metadata"]["voxgate_answer_path"]
        assert path in ("model", "grounded_model")  # the brain was asked (maybe with notes)


async def test_an_unknown_caller_is_served_without_a_customer(fake_desk: str) -> None:
    async with realtime_client(fake_desk, path="/voice/v1/realtime?caller=%2B19999999999") as client:
        created = await client.wait_for("session.created")
        assert (await say(client, "hello")).startswith("Hi!")
        transfer = await say(client, "let me speak to a person")
        assert "transferring you" in transfer
    rows = await call_log_of(fake_desk, created["session"]["id"])
    assert "customer_id" not in rows[0]["detail"]
    async with httpx.AsyncClient(base_url=fake_desk) as http:
        handoffs = (await http.get("/handoffs")).json()
    assert [(h["customer_id"], h["reason"]) for h in handoffs] == [(None, "let me speak to a person")]


async def test_a_twilio_call_is_set_up_from_its_caller_parameter(fake_desk: str) -> None:
    """The fake recogniser hears "hello there" whatever is said; the greeting names the
    customer that the <Parameter name="caller"> points to."""
    async with twilio_call(fake_desk, path="/voice/v1/twilio") as caller:
        await caller.start({"caller": "+15550100003"})
        after = len(caller.received)
        await caller.speak(tone(600))
        first = asyncio.ensure_future(caller.wait_for("media", after=after))
        await caller.silence_until(first)
        await first
        await caller.wait_played_out()
        await caller.stop()
        assert (await caller.wait_closed())[0] == 1000
    async with httpx.AsyncClient(base_url=fake_desk) as http:
        sessions = [r for r in (await http.get("/calls")).json() if r["kind"] == "session_started"]
    assert len(sessions) == 1
    rows = await call_log_of(fake_desk, sessions[0]["session_id"])
    detail = rows[0]["detail"]
    assert detail["customer_name"] == "Alan Turing" and detail["call_sid"] == caller.call_sid
    assert [r["text"] for r in rows if r["kind"] == "assistant_turn"][0].startswith("Hi Alan!")


async def test_the_desk_greets_a_known_caller_by_name_before_they_speak(
    tmp_path: Path, fake_speech: None
) -> None:
    """DeskSettings.greet (the default): the call opens with the desk's greeting, spoken while
    the line is silent; the dialogue manager then answers the caller's first words as ever."""
    async with running_server(desk_app(tmp_path, greet=True, asr="fake-asr", tts="quick-fake-tts")) as url:
        async with twilio_call(url, path="/voice/v1/twilio") as caller:
            await caller.start({"caller": "+15550100003"})
            greeted = asyncio.ensure_future(caller.wait_for("media"))
            await caller.silence_until(greeted)  # the caller says nothing
            await caller.wait_played_out()
            after = len(caller.received)
            await caller.speak(tone(600))  # the FAKE recogniser hears "hello there"
            answered = asyncio.ensure_future(caller.wait_for("media", after=after))
            await caller.silence_until(answered)
            await caller.wait_played_out()
            await caller.stop()
        async with httpx.AsyncClient(base_url=url) as http:
            (started,) = [r for r in (await http.get("/calls")).json() if r["kind"] == "session_started"]
        rows = await call_log_of(url, started["session_id"])
    said = [r["text"] for r in rows if r["kind"] == "assistant_turn"]
    assert said[0] == opening("Alan Turing") and said[0].startswith("Thanks for calling, Alan.")
    assert said[1].startswith("Hi Alan!")


async def test_with_a_tool_capable_remote_model_the_model_calls_the_tools(
    tmp_path: Path, fake_speech: None
) -> None:
    """VOXGATE_LLM=openai: no dialogue manager; an OpenAI-compatible endpoint (a scripted
    local one) is offered the desk's tools and the caller's name, calls order_status, and
    answers from its result."""

    async def respond(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(server.requests) == 1:
            call = [
                first_fragment(0, "call_1", "order_status"),
                arguments_fragment(0, '{"order_id": "1234"}'),
            ]
            events = [tool_call_event(call, finish_reason="tool_calls")]
        else:
            events = [chunk_event("It has shipped with UPS."), chunk_event(None, "stop")]
        await streaming([*events, "data: [DONE]\n\n"])(request, reader, writer)

    async with scripted_server(respond) as server:
        voice: dict[str, Any] = {
            "asr": "fake-asr",
            "tts": "quick-fake-tts",
            "llm": "openai",
            "backend_options": {"openai": {"base_url": server.base_url, "model": "any"}},
        }
        async with running_server(desk_app(tmp_path, **voice)) as url:
            async with realtime_client(url, path=f"/voice/v1/realtime?caller=%2B{ADA[1:]}") as client:
                created = await client.wait_for("session.created")
                assert (await say(client, "where is order twelve thirty four")) == "It has shipped with UPS."
            rows = await call_log_of(url, created["session"]["id"])
    first, second = (r.json() for r in server.requests)
    assert {t["function"]["name"] for t in first["tools"]} == {
        "order_status",
        "request_refund",
        "transfer_to_human",
    }
    assert "Ada Lovelace" in first["messages"][0]["content"]
    tool_message = next(m for m in second["messages"] if m["role"] == "tool")
    assert json.loads(tool_message["content"])["item"] == "wireless headphones"
    tools = [(r["text"], r["detail"]["arguments"]) for r in rows if r["kind"] == "tool_called"]
    assert tools == [("order_status", {"order_id": "1234"})]


# --- spoken, with the real fast profile --------------------------------------------------------------


@pytest.fixture(scope="module")
def caller_audio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from loadtests.corpus import CorpusUnavailable, load_synthetic

    sentences = ("Where is my order?", "Twelve thirty four.", "Can I talk to a human agent please?")
    try:
        utterances = load_synthetic(tmp_path_factory.mktemp("flite"), sentences)
    except CorpusUnavailable as exc:
        pytest.skip(str(exc))
    yield dict(zip(sentences, utterances, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("microphone", ["continuous", "half_duplex"])
async def test_spoken_conversation_calls_order_status_and_answers_with_audio(
    tmp_path: Path, caller_audio: dict[str, Any], microphone: str
) -> None:
    """flite speaks the caller at real time; the fast profile (Silero VAD, pocketsphinx,
    espeak-ng) hears it and the desk's brain answers. Phrasings pocketsphinx hears from flite:
    "twelve thirty four" (digit by digit it hears "one to three floor").

    The caller's microphone sends all along (a browser, Twilio), or only while the caller
    speaks (`half_duplex`: muted while the reply plays). The server places the reply on the
    input's clock, so the half-duplex caller's next sentence would line up with the reply that
    played while the microphone was muted, and the echo gate, having learned nothing, would
    chop it ("twelve thirty four" was heard as "three oh"), unless the gap in the input is
    seen for what it is."""
    from server.http.app import load_vad

    settings = Settings()
    app = desk_app(tmp_path, vad=load_vad(settings))
    async with running_server(app) as url:
        async with realtime_client(url, path=f"/voice/v1/realtime?caller=%2B{ADA[1:]}") as client:
            created = await client.wait_for("session.created", timeout_s=60)

            async def listen(ms: int) -> None:
                """The caller is quiet: their microphone sends silence, or nothing when muted."""
                if microphone == "continuous":
                    await client.stream(PcmFrame.silence(ms, 24_000))
                else:
                    await asyncio.sleep(ms / 1000)

            replies = []
            for sentence, utterance in caller_audio.items():
                after = len(client.events)
                await client.stream(PcmFrame(utterance.samples, 24_000))
                waited = asyncio.create_task(client.wait_for("response.done", timeout_s=60, after=after))
                if microphone == "half_duplex":
                    await client.stream(PcmFrame.silence(800, 24_000))  # then muted
                while not waited.done():
                    await listen(100)
                done = waited.result()
                assert done["response"]["status"] == "completed", (sentence, done)
                audio = decode_audio_deltas(
                    [e for e in client.events[after:] if e["type"] == "response.output_audio.delta"]
                )
                assert len(audio) > 24_000 // 2, sentence  # at least half a second of reply audio
                replies.append(_transcript(client, after))
                await listen(500)  # the reply finishes playing
        assert "order number" in replies[0]
        assert replies[1].startswith("Order one two three four, the wireless headphones, has shipped")
        assert "transferring you" in replies[2]
        rows = await call_log_of(url, created["session"]["id"])
    tools = [(r["text"], r["detail"]["arguments"]) for r in rows if r["kind"] == "tool_called"]
    assert ("order_status", {"order_id": "1234"}) in tools
    assert tools[-1][0] == "transfer_to_human"
    heard = [r["text"] for r in rows if r["kind"] == "user_turn"]
    assert heard[:2] == ["where is my order", "twelve thirty four"]
    assert any(r["kind"] == "turn_latency" for r in rows)
