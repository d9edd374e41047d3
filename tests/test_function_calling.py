"""Tools end to end over a real websocket: server-side tools with spoken filler, timeouts and
barge-in, and the protocol's client-side function calling (both dialects) with its bad input.
The language model is a scripted fake (`FakeToolCallingLlm`); speech is faked too."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from server import Settings, VoiceAgent
from server.audio import PcmFrame
from server.events import AgentEvent, AssistantTurn, ToolCalled
from server.model.cascade import CascadeModel
from server.model.fakes import (
    FAKE_AUDIO_SETTINGS,
    EnergyClassifierFactory,
    FakeAsr,
    FakeToolCallingLlm,
    FakeTts,
    tone,
)
from server.model.tool_calls import ForcedTool, ToolCallRequest
from tests.harness import RealtimeTestClient, realtime_client, running_server

BETA = {"OpenAI-Beta": "realtime=v1"}


def agent_with(llm: FakeToolCallingLlm, events: list[AgentEvent] | None = None) -> VoiceAgent:
    async def on_event(event: AgentEvent) -> None:
        if events is not None:
            events.append(event)

    model = CascadeModel(FakeAsr(["stop please"]), llm, FakeTts(ms_per_char=20))
    return VoiceAgent(
        Settings.model_validate(FAKE_AUDIO_SETTINGS),
        model=model,
        vad=EnergyClassifierFactory(),
        on_event=on_event,
    )


@asynccontextmanager
async def connected(agent: VoiceAgent, beta: bool = False) -> AsyncIterator[RealtimeTestClient]:
    async with running_server(agent.app()) as url, realtime_client(url, BETA if beta else None) as client:
        await client.wait_for("session.created")
        yield client


async def say_text(client: RealtimeTestClient, text: str) -> None:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    await client.send({"type": "conversation.item.create", "item": item})
    await client.send({"type": "response.create"})


def call(name: str, arguments: str, call_id: str = "call_1") -> ToolCallRequest:
    return ToolCallRequest(call_id, name, arguments)


# --- server-side tools ---------------------------------------------------------------------------


async def test_server_tool_round_trip_with_spoken_filler() -> None:
    llm = FakeToolCallingLlm([[call("order_status", '{"order_id": "A1"}')], ["It shipped yesterday."]])
    events: list[AgentEvent] = []
    agent = agent_with(llm, events)
    release = asyncio.Event()

    @agent.tool(timeout_s=30, filler="One moment, let me check.", filler_after_ms=0)
    async def order_status(order_id: str) -> dict[str, str]:
        """Where an order is."""
        await release.wait()
        return {"order_id": order_id, "status": "shipped"}

    async with connected(agent) as client:
        await say_text(client, "Where is order A1?")
        filler = await client.wait_for("response.output_audio_transcript.delta")
        assert filler["delta"] == "One moment, let me check."
        await client.wait_for("response.output_audio.delta")  # the filler is spoken, not just shown
        release.set()
        done = await client.wait_for("response.done")

    assert done["response"]["status"] == "completed"
    assert [o["type"] for o in done["response"]["output"]] == ["message"]  # nothing for the client
    transcript = client.of_type("response.output_audio_transcript.done")[0]["transcript"]
    assert transcript == "One moment, let me check. It shipped yesterday."
    assert client.of_type("response.function_call_arguments.done") == []
    assert llm.offered[0] == ["order_status"]
    second = llm.calls[1]
    assert [m.role for m in second] == ["user", "assistant", "tool"]
    assert second[1].tool_calls == (call("order_status", '{"order_id": "A1"}'),)
    assert json.loads(second[2].text) == {"order_id": "A1", "status": "shipped"}
    [called] = [e for e in events if isinstance(e, ToolCalled)]
    assert (called.name, called.arguments, called.error, called.client_side) == (
        "order_status",
        {"order_id": "A1"},
        None,
        False,
    )


async def test_a_tool_timeout_tells_the_model_and_the_reply_is_still_spoken() -> None:
    llm = FakeToolCallingLlm([[call("order_status", '{"order_id": "A1"}')], ["Sorry, our system is slow."]])
    events: list[AgentEvent] = []
    agent = agent_with(llm, events)

    @agent.tool(timeout_s=0.05)
    async def order_status(order_id: str) -> str:
        await asyncio.Event().wait()
        return "never"

    async with connected(agent) as client:
        await say_text(client, "Where is order A1?")
        done = await client.wait_for("response.done")

    assert done["response"]["status"] == "completed"
    transcript = client.of_type("response.output_audio_transcript.done")[0]["transcript"]
    assert transcript == "Sorry, our system is slow."
    told = json.loads(llm.calls[1][-1].text)
    assert told["error"] == "timeout" and "timed out" in told["message"]
    assert [e.error for e in events if isinstance(e, ToolCalled)] == ["timeout"]


async def test_bad_arguments_from_the_model_reach_the_model_not_the_session() -> None:
    llm = FakeToolCallingLlm([[call("order_status", '{"order": 5}')], ["Which order do you mean?"]])
    agent = agent_with(llm)
    ran: list[str] = []

    @agent.tool
    async def order_status(order_id: str) -> str:
        ran.append(order_id)
        return "shipped"

    async with connected(agent) as client:
        await say_text(client, "Where is it?")
        done = await client.wait_for("response.done")
    assert done["response"]["status"] == "completed"
    assert json.loads(llm.calls[1][-1].text)["error"] == "invalid_arguments"
    assert ran == [] and client.of_type("error") == []


async def test_barge_in_during_a_tool_call_cancels_it() -> None:
    llm = FakeToolCallingLlm([[call("order_status", '{"order_id": "A1"}')], ["Okay."]])
    events: list[AgentEvent] = []
    agent = agent_with(llm, events)
    started = asyncio.Event()
    cancelled = asyncio.Event()

    @agent.tool(timeout_s=60, filler="One moment please, I am looking that up for you.", filler_after_ms=0)
    async def order_status(order_id: str) -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    async with connected(agent) as client:
        await say_text(client, "Where is order A1?")
        await started.wait()
        await client.wait_for("response.output_audio.delta")
        await client.stream(tone(600))
        await client.stream(PcmFrame.silence(600, 24_000))
        first = await client.wait_for("response.done")
        await asyncio.wait_for(cancelled.wait(), 5)
        second = await client.wait_for("response.done", after=client.index_of(first) + 1)

    assert first["response"]["status"] == "cancelled"
    assert first["response"]["status_details"]["reason"] == "turn_detected"
    assert second["response"]["status"] == "completed"
    # the tool never finished: no result in the history the model saw next, and its
    # ToolCalled says it was cancelled
    assert all(m.role != "tool" for m in llm.calls[1])
    called = [e for e in events if isinstance(e, ToolCalled)]
    assert [(e.name, e.error, e.arguments) for e in called] == [
        ("order_status", "cancelled", '{"order_id": "A1"}')
    ]
    assert any(isinstance(e, AssistantTurn) and e.interrupted for e in events)


# --- client-side tools (the protocol's function calling) ------------------------------------------

SHOW_MAP = {
    "type": "function",
    "name": "show_map",
    "description": "Show a map of a city on the caller's screen.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.mark.parametrize("beta", [False, True], ids=["ga", "beta"])
async def test_client_tool_call_event_sequence_and_output(beta: bool) -> None:
    llm = FakeToolCallingLlm(
        [
            ["Opening the map.", call("show_map", '{"city": "Lyon"}', "call_map")],
            ["The map is on your screen."],
        ]
    )
    events: list[AgentEvent] = []
    agent = agent_with(llm, events)
    async with connected(agent, beta) as client:
        await client.send({"type": "session.update", "session": {"tools": [SHOW_MAP], "tool_choice": "auto"}})
        updated = await client.wait_for("session.updated")
        assert updated["session"]["tools"] == [SHOW_MAP]
        await say_text(client, "Where is the shop?")
        done = await client.wait_for("response.done")
        start = client.index_of(await client.wait_for("response.created"))
        sequence = [
            e
            for e in client.events[start : client.index_of(done) + 1]
            if e.get("item", {}).get("type") == "function_call"
            or e["type"].startswith("response.function_call_arguments")
            or e["type"] == "response.done"
        ]
        added = "conversation.item.created" if beta else "conversation.item.added"
        expected = [
            "response.output_item.added",
            added,
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            *([] if beta else ["conversation.item.done"]),
            "response.output_item.done",
            "response.done",
        ]
        assert [e["type"] for e in sequence] == expected
        item_id = sequence[0]["item"]["id"]
        assert sequence[0]["item"]["status"] == "in_progress" and sequence[0]["output_index"] == 1
        args_done = sequence[3]
        assert (args_done["call_id"], args_done["name"], args_done["arguments"], args_done["item_id"]) == (
            "call_map",
            "show_map",
            '{"city": "Lyon"}',
            item_id,
        )
        assert "".join(e["delta"] for e in client.of_type("response.function_call_arguments.delta")) == (
            '{"city": "Lyon"}'
        )
        assert done["response"]["status"] == "completed"
        output = done["response"]["output"]
        function_call = [o for o in output if o["type"] == "function_call"]
        assert function_call == [
            {
                "id": item_id,
                "object": "realtime.item",
                "type": "function_call",
                "status": "completed",
                "call_id": "call_map",
                "name": "show_map",
                "arguments": '{"city": "Lyon"}',
            }
        ]
        assert llm.offered[0] == ["show_map"] and len(llm.calls) == 1  # the server did not wait

        # the client runs it and answers
        mark = len(client.events)
        output_item = {"type": "function_call_output", "call_id": "call_map", "output": '{"shown": true}'}
        await client.send({"type": "conversation.item.create", "item": output_item})
        created = await client.wait_for(added, after=mark)
        assert created["item"]["type"] == "function_call_output"
        assert created["item"]["call_id"] == "call_map"
        await client.send({"type": "response.create"})
        second = await client.wait_for("response.done", after=mark)

    assert second["response"]["status"] == "completed"
    history = llm.calls[1]
    assert [m.role for m in history] == ["user", "assistant", "tool", "assistant"]
    assert history[1].tool_calls == (call("show_map", '{"city": "Lyon"}', "call_map"),)
    assert (history[2].tool_call_id, history[2].text) == ("call_map", '{"shown": true}')
    assert history[3].text == "Opening the map."
    [called] = [e for e in events if isinstance(e, ToolCalled)]
    assert called.client_side and called.arguments == {"city": "Lyon"} and called.result == '{"shown": true}'


async def error_for(client: RealtimeTestClient, event: dict[str, Any]) -> dict[str, Any]:
    mark = len(client.events)
    await client.send(event)
    error = await client.wait_for("error", after=mark)
    return dict(error["error"])


@pytest.mark.parametrize(
    ("item", "code", "param"),
    [
        (
            {"type": "function_call_output", "call_id": "call_nope", "output": "{}"},
            "call_id_not_found",
            "item.call_id",
        ),
        ({"type": "function_call_output", "output": "{}"}, "missing_field", "item.call_id"),
        ({"type": "function_call_output", "call_id": "call_map"}, "missing_field", "item.output"),
        (
            {"type": "function_call_output", "call_id": "call_map", "output": 42},
            "invalid_value",
            "item.output",
        ),
        (
            {"type": "function_call_output", "call_id": ["call_map"], "output": "{}"},
            "invalid_value",
            "item.call_id",
        ),
    ],
)
async def test_bad_function_call_output_is_an_error_event(
    item: dict[str, Any], code: str, param: str
) -> None:
    llm = FakeToolCallingLlm([[call("show_map", '{"city": "Lyon"}', "call_map")], ["Done."]])
    async with connected(agent_with(llm)) as client:
        await client.send({"type": "session.update", "session": {"tools": [SHOW_MAP]}})
        await say_text(client, "Show me Lyon.")
        await client.wait_for("response.done")
        error = await error_for(client, {"type": "conversation.item.create", "item": item})
        assert (error["code"], error["param"]) == (code, param)
        # the session lives on, and the real call can still be answered exactly once
        good = {"type": "function_call_output", "call_id": "call_map", "output": "{}"}
        mark = len(client.events)
        await client.send({"type": "conversation.item.create", "item": good})
        await client.wait_for("conversation.item.added", after=mark)
        again = await error_for(client, {"type": "conversation.item.create", "item": good})
        assert again["code"] == "call_id_not_found"


@pytest.mark.parametrize(
    ("tools", "code", "param"),
    [
        ({"name": "x"}, "invalid_value", "session.tools"),
        ([{"type": "mcp", "server_label": "x"}], "invalid_value", "session.tools[0].type"),
        ([{"type": "function"}], "missing_field", "session.tools[0].name"),
        ([{"type": "function", "name": "show map"}], "invalid_value", "session.tools[0].name"),
        ([SHOW_MAP, SHOW_MAP], "invalid_value", "session.tools[1].name"),
        (
            [{"type": "function", "name": "f", "parameters": "none"}],
            "invalid_value",
            "session.tools[0].parameters",
        ),
        (
            [{"type": "function", "name": "f", "description": 3}],
            "invalid_value",
            "session.tools[0].description",
        ),
        ([{"type": "function", "name": "order_status"}], "invalid_value", "session.tools[0].name"),
    ],
)
async def test_bad_client_tools_are_refused_and_change_nothing(tools: object, code: str, param: str) -> None:
    await refused_and_nothing_changed({"tools": tools, "instructions": "changed"}, code, param)


@pytest.mark.parametrize(
    ("tool_choice", "param"),
    [
        ("banana", "session.tool_choice"),
        (5, "session.tool_choice"),
        ({"type": "function"}, "session.tool_choice"),
        ({"type": "mcp", "name": "order_status"}, "session.tool_choice"),
        ({"type": "function", "name": "no_such_tool"}, "session.tool_choice.name"),
    ],
)
async def test_a_bad_tool_choice_is_refused_and_changes_nothing(tool_choice: object, param: str) -> None:
    await refused_and_nothing_changed({"tool_choice": tool_choice}, "invalid_value", param)


async def refused_and_nothing_changed(session: dict[str, Any], code: str, param: str) -> None:
    """The session.update gets an error event, and the next reply is offered the same tools
    with the same choice as before it."""
    llm = FakeToolCallingLlm([["Hello."]])
    agent = agent_with(llm)

    @agent.tool
    async def order_status(order_id: str) -> str:
        return "shipped"

    async with connected(agent) as client:
        error = await error_for(client, {"type": "session.update", "session": session})
        assert (error["code"], error["param"]) == (code, param)
        await say_text(client, "Hi.")
        await client.wait_for("response.done")
    assert llm.offered == [["order_status"]]
    assert llm.choices == ["auto"]
    assert client.of_type("session.updated") == []


async def test_client_and_server_tools_are_offered_together() -> None:
    llm = FakeToolCallingLlm([["Hello."]])
    agent = agent_with(llm)

    @agent.tool
    async def order_status(order_id: str) -> str:
        return "shipped"

    async with connected(agent) as client:
        await client.send(
            {"type": "session.update", "session": {"tools": [SHOW_MAP], "tool_choice": "required"}}
        )
        await client.wait_for("session.updated")
        await say_text(client, "Hi.")
        await client.wait_for("response.done")
    assert llm.offered == [["order_status", "show_map"]]
    assert llm.choices == ["required"]


async def test_a_speculative_reply_runs_no_tool_until_it_is_adopted() -> None:
    """Replies are prepared during the end-of-turn silence; a tool (maybe with side effects)
    must not run for a turn that then goes on."""
    asks: list[str | ToolCallRequest] = [call("cancel_order", '{"order_id": "A1"}')]
    llm = FakeToolCallingLlm([asks, asks, ["Done, it is cancelled."]])  # prepared, real, after the tool
    model = CascadeModel(FakeAsr(["cancel", "cancel order A1"]), llm, FakeTts(ms_per_char=20))
    agent = VoiceAgent(
        Settings(silence_duration_ms=500, speculative_silence_ms=100),
        model=model,
        vad=EnergyClassifierFactory(),
    )
    ran: list[str] = []

    @agent.tool
    async def cancel_order(order_id: str) -> str:
        ran.append(order_id)
        return "cancelled"

    async with connected(agent) as client:
        await client.stream(tone(400))
        await client.stream(PcmFrame.silence(300, 24_000))  # long enough to prepare, not to end
        assert llm.calls, "the reply was prepared during the pause"
        assert ran == []  # its tool call waits for the turn to end
        await client.stream(tone(400))
        await client.stream(PcmFrame.silence(800, 24_000))
        done = await client.wait_for("response.done")
    assert done["response"]["status"] == "completed"
    assert ran == ["A1"]  # once: the abandoned speculation's call never ran
    assert len(llm.calls) == 3
    assert (
        client.of_type("response.output_audio_transcript.done")[0]["transcript"] == "Done, it is cancelled."
    )


async def test_a_tool_choice_naming_a_client_function_forces_it() -> None:
    llm = FakeToolCallingLlm([[call("show_map", '{"city": "Lyon"}')]])
    agent = agent_with(llm)
    async with connected(agent) as client:
        forced = {"type": "function", "name": "show_map"}
        await client.send({"type": "session.update", "session": {"tools": [SHOW_MAP], "tool_choice": forced}})
        updated = await client.wait_for("session.updated")
        assert updated["session"]["tool_choice"] == forced
        await say_text(client, "Where is Lyon?")
        await client.wait_for("response.done")
    assert llm.choices == [ForcedTool("show_map")]
