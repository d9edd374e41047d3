"""Server-side tools: schemas from signatures, validation, timeouts, threads, filler, events,
and the cascade's tool rounds over a scripted fake language model. No timed assertions: slow
tools wait on events the test controls."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field

from server.agent import BrainLlm, BrainRequest
from server.events import AgentEvent, ToolCalled
from server.model.base import Message, SessionOptions
from server.model.fakes import FakeToolCallingLlm
from server.model.tool_calls import ForcedTool, ToolCallRequest, ToolChoice, ToolSpec
from server.model.tool_rounds import ToolExchange, complete_with_tools
from server.tools import SessionTools, Tool, ToolBox, run_with_filler, tool


async def order_status(order_id: str, include_items: bool = False) -> dict[str, Any]:
    """Look up where an order is."""
    return {"order_id": order_id, "status": "shipped", "items": ["kettle"] if include_items else []}


class RefundRequest(BaseModel):
    order_id: str
    amount_eur: Annotated[float, Field(gt=0, description="How much to refund, in euros")]


def refund(request: RefundRequest) -> str:
    """Refund part of an order."""
    return f"refunded {request.amount_eur:.2f} EUR on {request.order_id}"


def box_of(*tools: Tool) -> ToolBox:
    return ToolBox(tools)


# --- schema ----------------------------------------------------------------------------------


def test_the_schema_comes_from_the_signature_and_the_docstring() -> None:
    spec = Tool.from_function(order_status).spec()
    assert spec.name == "order_status"
    assert spec.description == "Look up where an order is."
    assert spec.parameters["type"] == "object"
    assert spec.parameters["properties"]["order_id"]["type"] == "string"
    assert spec.parameters["properties"]["include_items"] == {
        "default": False,
        "title": "Include Items",
        "type": "boolean",
    }
    assert spec.parameters["required"] == ["order_id"]
    assert spec.parameters["additionalProperties"] is False
    assert not spec.client_side


def test_a_single_model_parameter_is_the_schema() -> None:
    t = Tool.from_function(refund, timeout_s=2, filler="One moment.")
    spec = t.spec()
    assert t.takes_model and t.timeout_s == 2 and t.filler == "One moment."
    assert spec.parameters["properties"]["amount_eur"]["description"] == "How much to refund, in euros"
    assert spec.parameters["properties"]["amount_eur"]["exclusiveMinimum"] == 0
    assert sorted(spec.parameters["required"]) == ["amount_eur", "order_id"]


def test_a_function_without_parameters_has_an_empty_object_schema() -> None:
    def opening_hours() -> str:
        return "9 to 5"

    assert Tool.from_function(opening_hours).spec().parameters == {
        "type": "object",
        "properties": {},
        "additionalProperties": False,
    }


def test_functions_a_model_cannot_call_are_refused_at_registration() -> None:
    def untyped(order_id):  # type: ignore[no-untyped-def]
        return order_id

    def star(*ids: str) -> None: ...

    with pytest.raises(TypeError, match="needs a type annotation"):
        Tool.from_function(untyped)
    with pytest.raises(TypeError, match=r"\*args"):
        Tool.from_function(star)
    with pytest.raises(ValueError, match="must match"):
        Tool.from_function(order_status, name="order status")
    with pytest.raises(ValueError, match="timeout_s"):
        Tool.from_function(order_status, timeout_s=0)
    with pytest.raises(ValueError, match="already registered"):
        box_of(Tool.from_function(order_status), Tool.from_function(order_status))


def test_the_tool_decorator_builds_a_tool() -> None:
    @tool(timeout_s=3, filler="Let me look.", filler_after_ms=100)
    async def stock(sku: str) -> int:
        """Units in stock."""
        return 3

    assert isinstance(stock, Tool)
    assert (stock.name, stock.timeout_s, stock.filler, stock.filler_after_ms) == (
        "stock",
        3,
        "Let me look.",
        100,
    )


# --- calls -----------------------------------------------------------------------------------


async def test_a_call_validates_runs_and_returns_json_text() -> None:
    result = await box_of(Tool.from_function(order_status)).call("order_status", '{"order_id": "A12"}')
    assert result.ok
    assert json.loads(result.output) == {"order_id": "A12", "status": "shipped", "items": []}
    assert result.arguments == {"order_id": "A12", "include_items": False}
    assert result.value["status"] == "shipped"


async def test_arguments_are_coerced_like_pydantic_does() -> None:
    result = await box_of(Tool.from_function(refund)).call("refund", {"order_id": "A1", "amount_eur": "12.5"})
    assert result.ok
    assert json.loads(result.output) == "refunded 12.50 EUR on A1"


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ("{not json", "(arguments)"),
        ("[1, 2]", "(arguments)"),
        ("{}", "order_id"),
        ('{"order_id": "A1", "include_items": "perhaps"}', "include_items"),
        ('{"order_id": "A1", "coupon": "X"}', "coupon"),
        ('{"order_id": ["A1"]}', "order_id"),
    ],
)
async def test_bad_arguments_give_an_error_the_model_sees(arguments: str, field: str) -> None:
    called = False

    async def lookup(order_id: str, include_items: bool = False) -> str:
        nonlocal called
        called = True
        return "found"

    result = await box_of(Tool.from_function(lookup)).call("lookup", arguments)
    assert not result.ok and result.error == "invalid_arguments"
    body = json.loads(result.output)
    assert body["error"] == "invalid_arguments"
    assert field in [d["field"] for d in body["details"]]
    assert result.arguments == arguments
    assert not called


async def test_empty_arguments_text_means_no_arguments() -> None:
    async def opening_hours() -> str:
        return "9 to 5"

    result = await box_of(Tool.from_function(opening_hours)).call("opening_hours", "")
    assert result.ok and json.loads(result.output) == "9 to 5"


async def test_an_unknown_tool_is_an_error_result() -> None:
    result = await box_of(Tool.from_function(order_status)).call("cancel_order", "{}")
    assert result.error == "unknown_tool"
    assert "order_status" in json.loads(result.output)["message"]


async def test_a_tool_that_takes_too_long_times_out() -> None:
    never = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow_lookup(order_id: str) -> str:
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    result = await box_of(Tool.from_function(slow_lookup, timeout_s=0.05)).call(
        "slow_lookup", '{"order_id": "1"}'
    )
    assert result.error == "timeout"
    assert json.loads(result.output) == {"error": "timeout", "message": "the lookup timed out after 0.05 s"}
    assert cancelled.is_set()


async def test_a_sync_tool_runs_in_a_worker_thread() -> None:
    threads: list[int] = []

    def lookup(order_id: str) -> str:
        threads.append(threading.get_ident())
        return order_id.upper()

    result = await box_of(Tool.from_function(lookup)).call("lookup", '{"order_id": "a1"}')
    assert json.loads(result.output) == "A1"
    assert threads and threads[0] != threading.get_ident()


async def test_a_failing_tool_is_an_error_result() -> None:
    async def broken(order_id: str) -> str:
        raise RuntimeError("database is down")

    result = await box_of(Tool.from_function(broken)).call("broken", '{"order_id": "1"}')
    assert result.error == "tool_failed"
    assert "database is down" in json.loads(result.output)["message"]


async def test_a_result_that_is_not_json_is_an_error_result() -> None:
    async def opaque(order_id: str) -> object:
        return threading.Lock()

    result = await box_of(Tool.from_function(opaque)).call("opaque", '{"order_id": "1"}')
    assert result.error == "tool_failed"


async def test_dataclasses_and_models_serialise() -> None:
    @dataclass
    class Parcel:
        carrier: str
        days: int

    async def parcel(order_id: str) -> Parcel:
        return Parcel("DHL", 2)

    result = await box_of(Tool.from_function(parcel)).call("parcel", '{"order_id": "1"}')
    assert json.loads(result.output) == {"carrier": "DHL", "days": 2}


# --- filler and cancellation -------------------------------------------------------------------


async def test_the_filler_is_said_once_when_the_call_outlasts_its_threshold() -> None:
    release = asyncio.Event()
    said: list[str] = []

    async def slow() -> str:
        await release.wait()
        return "done"

    async def call() -> Any:
        return await box_of(Tool.from_function(slow)).call("slow", "{}")

    filler_said = asyncio.Event()

    def say(text: str) -> None:
        said.append(text)
        filler_said.set()

    task = asyncio.create_task(run_with_filler(call(), "One moment.", 0, say))
    await filler_said.wait()
    assert not task.done()
    release.set()
    result = await task
    assert said == ["One moment."]
    assert json.loads(result.output) == "done"


async def test_no_filler_when_the_call_is_done_first() -> None:
    said: list[str] = []

    async def quick() -> str:
        return "done"

    result = await run_with_filler(
        box_of(Tool.from_function(quick)).call("quick", "{}"), "One moment.", 60_000, said.append
    )
    assert result.ok and said == []


async def test_cancelling_a_call_cancels_the_tool() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow() -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    published: list[AgentEvent] = []
    tools = SessionTools(box_of(Tool.from_function(slow, filler="Hold on.")), "sess_1", published.append)
    task = asyncio.create_task(tools.call("slow", "{}", lambda text: None, call_id="call_7"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set()
    # the call is still on record: the tool may have acted before it was cut
    [event] = published
    assert isinstance(event, ToolCalled)
    assert (event.call_id, event.name, event.arguments, event.error, event.result) == (
        "call_7",
        "slow",
        "{}",
        "cancelled",
        "",
    )
    assert event.duration_ms >= 0 and not event.client_side


async def test_session_tools_publish_tool_called_and_route_client_tools() -> None:
    events: list[AgentEvent] = []
    client = ToolSpec("show_map", "Show a map on the caller's screen", client_side=True)
    tools = SessionTools(
        box_of(Tool.from_function(order_status)), "sess_1", events.append, [client], "required"
    )
    assert [s.name for s in tools.specs()] == ["order_status", "show_map"]
    assert tools.choice == "required"
    assert tools.is_client_side("show_map") and not tools.is_client_side("order_status")
    assert not tools.is_client_side("nothing")
    await tools.call("order_status", '{"order_id": "A1"}', call_id="call_9")
    await tools.call("order_status", '{"order_id": 5, "x": 1}', call_id="call_10")
    [ok, bad] = events
    assert isinstance(ok, ToolCalled) and isinstance(bad, ToolCalled)
    assert (ok.session_id, ok.call_id, ok.name, ok.error, ok.client_side) == (
        "sess_1",
        "call_9",
        "order_status",
        None,
        False,
    )
    assert ok.arguments == {"order_id": "A1", "include_items": False}
    assert json.loads(ok.result)["status"] == "shipped"
    assert ok.duration_ms >= 0
    assert bad.error == "invalid_arguments" and bad.arguments == '{"order_id": 5, "x": 1}'


# --- the cascade's tool rounds ------------------------------------------------------------------


class ObservedList(list[str]):
    """A list that sets `grown` when something is appended."""

    def __init__(self) -> None:
        super().__init__()
        self.grown = asyncio.Event()

    def append(self, item: str) -> None:
        super().append(item)
        self.grown.set()


def call(name: str, arguments: str, call_id: str = "call_1") -> ToolCallRequest:
    return ToolCallRequest(call_id, name, arguments)


async def rounds(
    llm: FakeToolCallingLlm, tools: SessionTools | None, said: list[str] | None = None
) -> list[str | ToolExchange | ToolCallRequest]:
    options = SessionOptions(tools=tools)
    history = [Message("user", "Where is order A1?")]
    sink = said if said is not None else []
    return [item async for item in complete_with_tools(llm.complete, history, options, sink.append)]


async def test_a_server_tool_round_feeds_the_result_back_to_the_model() -> None:
    llm = FakeToolCallingLlm(
        [
            ["Let me see.", call("order_status", '{"order_id": "A1"}')],
            ["It shipped yesterday."],
        ]
    )
    tools = SessionTools(box_of(Tool.from_function(order_status)), "s", lambda e: None)
    items = await rounds(llm, tools)
    texts = [i for i in items if isinstance(i, str)]
    [exchange] = [i for i in items if isinstance(i, ToolExchange)]
    assert "".join(texts).split() == ["Let", "me", "see.", "It", "shipped", "yesterday."]
    asked, answered = exchange.messages
    assert asked.role == "assistant" and asked.text == ""  # the reply's own message holds it
    assert asked.tool_calls == (call("order_status", '{"order_id": "A1"}'),)
    assert answered.role == "tool" and answered.tool_call_id == "call_1"
    assert json.loads(answered.text)["status"] == "shipped"
    # the second request sees the call and its result after the user's message
    assert [m.role for m in llm.calls[1]] == ["user", "assistant", "tool"]
    assert llm.calls[1][1].text == "Let me see."
    assert llm.calls[1][2].text == answered.text
    assert llm.offered == [["order_status"], ["order_status"]]


async def test_a_client_tool_call_ends_the_reply_and_is_handed_out() -> None:
    llm = FakeToolCallingLlm([[call("show_map", '{"city": "Lyon"}', "call_c")], ["never asked"]])
    client = ToolSpec("show_map", client_side=True)
    tools = SessionTools(box_of(), "s", lambda e: None, [client])
    items = await rounds(llm, tools)
    [exchange, handed] = items
    assert isinstance(exchange, ToolExchange)
    assert [m.role for m in exchange.messages] == ["assistant"]  # its output comes from the client
    assert handed == call("show_map", '{"city": "Lyon"}', "call_c")
    assert len(llm.calls) == 1


async def test_rounds_are_bounded_and_the_last_one_may_not_call_tools() -> None:
    looping: list[str | ToolCallRequest] = [call("order_status", '{"order_id": "A1"}')]
    llm = FakeToolCallingLlm([looping, looping, looping, looping, ["Sorry, I could not find it."]])
    tools = SessionTools(box_of(Tool.from_function(order_status)), "s", lambda e: None)
    items = await rounds(llm, tools)
    assert len(llm.calls) == 5
    assert llm.choices == ["auto", "auto", "auto", "auto", "none"]
    assert sum(isinstance(i, ToolExchange) for i in items) == 4
    assert "".join(i for i in items if isinstance(i, str)).strip() == "Sorry, I could not find it."


async def test_calls_from_a_model_offered_no_tools_are_ignored() -> None:
    llm = FakeToolCallingLlm([["Hello.", call("order_status", "{}")]])
    items = await rounds(llm, None)
    assert items == ["Hello. "]


async def test_a_slow_tool_speaks_its_filler_once_per_round() -> None:
    release = asyncio.Event()

    async def slow_lookup(order_id: str) -> str:
        await release.wait()
        return "found"

    llm = FakeToolCallingLlm(
        [
            [call("slow_lookup", '{"order_id": "1"}', "c1"), call("slow_lookup", '{"order_id": "2"}', "c2")],
            ["Both found."],
        ]
    )
    said = ObservedList()
    tools = SessionTools(
        box_of(Tool.from_function(slow_lookup, filler="One moment.", filler_after_ms=0)), "s", lambda e: None
    )
    task = asyncio.create_task(rounds(llm, tools, said))
    await said.grown.wait()
    release.set()
    items = await task
    assert said == ["One moment."]
    [exchange] = [i for i in items if isinstance(i, ToolExchange)]
    assert [m.tool_call_id for m in exchange.messages[1:]] == ["c1", "c2"]


async def test_a_timed_out_tool_tells_the_model_and_the_reply_goes_on() -> None:
    async def stuck(order_id: str) -> str:
        await asyncio.Event().wait()
        return "never"

    llm = FakeToolCallingLlm([[call("stuck", '{"order_id": "1"}')], ["Our system is slow today."]])
    tools = SessionTools(box_of(Tool.from_function(stuck, timeout_s=0.02)), "s", lambda e: None)
    items = await rounds(llm, tools)
    assert json.loads(llm.calls[1][-1].text)["error"] == "timeout"
    assert "".join(i for i in items if isinstance(i, str)).strip() == "Our system is slow today."


# --- brains --------------------------------------------------------------------------------------


async def test_a_brain_calls_tools_and_its_filler_is_spoken_while_it_waits() -> None:
    release = asyncio.Event()
    results: list[Any] = []

    async def slow_status(order_id: str) -> dict[str, str]:
        await release.wait()
        return {"status": "shipped"}

    async def brain(request: BrainRequest) -> AsyncIterator[str]:
        yield "Checking."
        result = await request.call_tool("slow_status", order_id="A1")
        bad = await request.call_tool("slow_status", order_idx="A1")
        results.extend([result, bad])
        yield f"It is {result.value['status']}."

    events: list[AgentEvent] = []
    box = box_of(Tool.from_function(slow_status, filler="One moment.", filler_after_ms=0))
    options = SessionOptions(tools=SessionTools(box, "s", events.append))
    pieces: list[str] = []
    stream = BrainLlm(brain).complete([Message("user", "Where is A1?")], options)
    async for piece in stream:
        pieces.append(piece)
        if "One moment." in piece:
            release.set()
    assert [p.strip() for p in pieces] == ["Checking.", "One moment.", "It is shipped."]
    ok, bad = results
    assert ok.ok and bad.error == "invalid_arguments"
    assert [e.error for e in events if isinstance(e, ToolCalled)] == [None, "invalid_arguments"]


async def test_a_brain_without_tools_gets_an_error_result() -> None:
    request = BrainRequest((), "", {})
    result = await request.call_tool("order_status", order_id="1")
    assert result.error == "unknown_tool"


@pytest.mark.parametrize("choice", ["required", ForcedTool("order_status")])
async def test_a_forcing_tool_choice_applies_to_the_first_round_only(choice: ToolChoice) -> None:
    """After the forced call the model must be free to answer with the result, else every
    round would call again until the last (as the OpenAI Agents SDK's reset_tool_choice)."""
    asks: list[str | ToolCallRequest] = [call("order_status", '{"order_id": "A1"}')]
    llm = FakeToolCallingLlm([asks, ["It has shipped."]])
    tools = SessionTools(box_of(Tool.from_function(order_status)), "s", lambda e: None, choice=choice)
    items = await rounds(llm, tools)
    assert llm.choices == [choice, "auto"]
    assert "".join(i for i in items if isinstance(i, str)).strip() == "It has shipped."
