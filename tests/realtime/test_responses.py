"""`response.create` beyond the defaults: per-response overrides, metadata, and out-of-band
responses (`conversation: "none"`) answered beside the caller's reply without touching the
history. Parsing, then the whole path over a websocket with FAKE models."""

from __future__ import annotations

from typing import Any

import pytest

from server.errors import ProtocolViolation
from server.model.fakes import FakeLlm, FakeTts
from server.realtime.responses import parse_response_create
from server.streaming.session_config import SessionConfig
from tests.conftest import fake_app
from tests.harness import decode_audio_deltas, realtime_client, running_server

CONFIG = SessionConfig(id="sess_test", model="test")


def user_text(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def test_out_of_band_with_its_own_input_metadata_and_limits() -> None:
    command = parse_response_create(
        {
            "conversation": "none",
            "input": [
                {
                    "type": "message",
                    "role": "system",
                    "content": [{"type": "input_text", "text": "Classify."}],
                },
                user_text("I want my money back"),
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "Sorry."}],
                },
            ],
            "instructions": "Answer with one word.",
            "output_modalities": ["text"],
            "max_output_tokens": 5,
            "metadata": {"purpose": "intent"},
        },
        CONFIG,
        "evt_1",
    )
    assert command.out_of_band and command.metadata == {"purpose": "intent"}
    assert command.options is not None
    assert (command.options.with_audio, command.options.instructions, command.options.max_output_tokens) == (
        False,
        "Answer with one word.",
        5,
    )
    assert command.context is not None
    assert [(m.role, m.text) for m in command.context] == [
        ("system", "Classify."),
        ("user", "I want my money back"),
        ("assistant", "Sorry."),
    ]
    assert parse_response_create({"max_output_tokens": "inf"}, CONFIG, None).options.max_output_tokens is None  # type: ignore[union-attr]
    assert parse_response_create({}, CONFIG, None).out_of_band is False


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"conversation": "other"}, "response.conversation"),
        ({"tools": [{"type": "function", "name": "f"}]}, "response.tools"),
        ({"tool_choice": "required"}, "response.tool_choice"),
        ({"metadata": {"k": 1}}, "response.metadata"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "response.metadata"),
        ({"metadata": {"k": "v" * 513}}, "response.metadata"),
        ({"conversation": "none", "input": "hi"}, "response.input"),
        (
            {"conversation": "none", "input": [{"type": "item_reference", "id": "item_1"}]},
            "response.input[0]",
        ),
        (
            {"conversation": "none", "input": [{"type": "function_call", "name": "f"}]},
            "response.input[0].type",
        ),
        (
            {
                "conversation": "none",
                "input": [
                    {"type": "message", "role": "user", "content": [{"type": "output_text", "text": "x"}]}
                ],
            },
            "response.input[0].content[0]",
        ),
        ({"input": [user_text("hi")]}, "response.input"),  # its own input needs conversation none
        ({"max_output_tokens": 0}, "response.max_output_tokens"),
        ({"output_modalities": ["video"]}, "response.output_modalities"),
    ],
)
def test_what_cannot_be_honoured_is_refused_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ProtocolViolation) as refused:
        parse_response_create(body, CONFIG, None)
    assert refused.value.param == param


async def test_an_out_of_band_answer_runs_beside_the_callers_reply_and_leaves_the_history() -> None:
    llm = FakeLlm(["One two three four five six seven eight.", "billing", "Next reply."])
    async with running_server(fake_app(llm=llm, tts=FakeTts())) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        await client.send({"type": "conversation.item.create", "item": user_text("I was charged twice")})
        await client.send({"type": "response.create", "response": {"metadata": {"turn": "1"}}})
        created = await client.wait_for("response.created")
        assert created["response"]["metadata"] == {"turn": "1"}
        await client.wait_for("response.output_audio.delta")  # the caller's reply is playing (2 s of audio)
        await client.send(
            {
                "type": "response.create",
                "response": {
                    "conversation": "none",
                    "instructions": "Name the topic in one word.",
                    "output_modalities": ["text"],
                    "metadata": {"purpose": "topic"},
                },
            }
        )
        oob_created = await client.wait_for("response.created", after=client.index_of(created) + 1)
        oob_id = oob_created["response"]["id"]
        assert oob_created["response"]["conversation_id"] is None
        assert oob_created["response"]["metadata"] == {"purpose": "topic"}
        dones: list[dict[str, Any]] = []
        while len(dones) < 2:
            done = await client.wait_for(
                "response.done", after=client.index_of(dones[-1]) + 1 if dones else 0
            )
            dones.append(done)
        by_id = {d["response"]["id"]: d["response"] for d in dones}
        assert by_id[oob_id]["status"] == "completed"
        assert by_id[oob_id]["output"][0]["content"][0]["text"].strip() == "billing"
        main = by_id[created["response"]["id"]]
        assert main["status"] == "completed" and main["metadata"] == {"turn": "1"}  # not cut, not paused
        added_ids = [e["item"]["id"] for e in client.of_type("conversation.item.added")]
        assert by_id[oob_id]["output"][0]["id"] not in added_ids  # joined no conversation
        # the out-of-band call saw the conversation so far; its answer is not in the history after
        assert [m.text for m in llm.calls[1]] == [
            "I was charged twice",
            "One two three four five six seven eight.",
        ]
        await client.send({"type": "conversation.item.create", "item": user_text("ok")})
        await client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        await client.wait_for("response.done", after=client.index_of(dones[-1]) + 1)
    assert "billing" not in " ".join(m.text for m in llm.calls[2])


async def test_out_of_band_with_its_own_input_audio_refused_and_cancel() -> None:
    llm = FakeLlm(["slow answer with many words in it"], delay_s=0.2)
    async with running_server(fake_app(llm=llm)) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        await client.send(
            {"type": "response.create", "response": {"conversation": "none", "output_modalities": ["audio"]}}
        )
        error = (await client.wait_for("error"))["error"]
        assert error["param"] == "response.output_modalities"
        own_input = {
            "conversation": "none",
            "input": [user_text("classify: refund")],
            "output_modalities": ["text"],
        }
        await client.send({"type": "response.create", "response": own_input})
        created = await client.wait_for("response.created")
        await client.wait_for("response.output_text.delta")
        await client.send({"type": "response.cancel", "response_id": created["response"]["id"]})
        done = await client.wait_for("response.done")
        assert done["response"]["status"] == "cancelled"
    assert [m.text for m in llm.calls[0]] == ["classify: refund"]


async def test_items_are_retrieved_as_last_described_and_unknown_ones_are_an_error() -> None:
    llm = FakeLlm(["Sure thing."])
    async with running_server(fake_app(llm=llm)) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        await client.send(
            {"type": "conversation.item.create", "item": {**user_text("hello"), "id": "item_mine"}}
        )
        await client.wait_for("conversation.item.added")
        await client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        done = await client.wait_for("response.done")
        reply_id = done["response"]["output"][0]["id"]
        await client.send({"type": "conversation.item.retrieve", "item_id": "item_mine"})
        mine = (await client.wait_for("conversation.item.retrieved"))["item"]
        assert (mine["id"], mine["role"], mine["content"][0]["text"]) == ("item_mine", "user", "hello")
        await client.send({"type": "conversation.item.retrieve", "item_id": reply_id})
        first = client.of_type("conversation.item.retrieved")[0]
        reply = (await client.wait_for("conversation.item.retrieved", after=client.index_of(first) + 1))[
            "item"
        ]
        assert reply["status"] == "completed" and reply["content"][0]["text"].strip() == "Sure thing."
        await client.send({"type": "conversation.item.retrieve", "item_id": "item_nope", "event_id": "evt_9"})
        error = (await client.wait_for("error"))["error"]
        assert (error["code"], error["param"], error["event_id"]) == ("item_not_found", "item_id", "evt_9")


async def test_a_spoken_turn_is_retrieved_with_its_transcript() -> None:
    async with running_server(fake_app()) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        transcription = {"audio": {"input": {"transcription": {"model": "voxgate-asr"}}}}
        await client.send({"type": "session.update", "session": {"type": "realtime", **transcription}})
        started, _ = await client.speak_tone_turn()
        completed = await client.wait_for("conversation.item.input_audio_transcription.completed")
        await client.send({"type": "conversation.item.retrieve", "item_id": started["item_id"]})
        item = (await client.wait_for("conversation.item.retrieved"))["item"]
        assert item["content"][0]["transcript"] == completed["transcript"] == "hello there"
        await client.wait_for("response.done")
        await client.send({"type": "conversation.item.delete", "item_id": started["item_id"]})
        assert (await client.wait_for("conversation.item.deleted"))["item_id"] == started["item_id"]


async def test_a_replayed_function_call_and_its_output_join_the_history() -> None:
    llm = FakeLlm(["It is sunny."])
    async with running_server(fake_app(llm=llm)) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        call = {
            "type": "function_call",
            "call_id": "call_1",
            "name": "weather",
            "arguments": '{"city": "Oslo"}',
        }
        await client.send(
            {"type": "conversation.item.create", "item": {"type": "function_call", "name": "weather"}}
        )
        error = (await client.wait_for("error"))["error"]
        assert (error["code"], error["param"]) == ("missing_field", "item.call_id")
        await client.send({"type": "conversation.item.create", "item": call})
        added = await client.wait_for("conversation.item.added")
        assert {k: added["item"][k] for k in ("type", "call_id", "name", "arguments")} == {
            k: call[k] for k in ("type", "call_id", "name", "arguments")
        }
        output = {"type": "function_call_output", "call_id": "call_1", "output": '{"sky": "sunny"}'}
        await client.send({"type": "conversation.item.create", "item": output})
        await client.wait_for("conversation.item.added", after=client.index_of(added) + 1)
        await client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        assert (await client.wait_for("response.done"))["response"]["status"] == "completed"
    assert [(m.role, m.text) for m in llm.calls[0]] == [("assistant", ""), ("tool", '{"sky": "sunny"}')]


async def test_output_speed_changes_the_voice_rate_and_is_bounded() -> None:
    async with (
        running_server(fake_app(llm=FakeLlm(["Ten chars."]), tts=FakeTts())) as url,
        realtime_client(url) as client,
    ):
        await client.wait_for("session.created")
        await client.send(
            {"type": "session.update", "session": {"type": "realtime", "audio": {"output": {"speed": 3}}}}
        )
        error = (await client.wait_for("error"))["error"]
        assert error["param"] == "session.audio.output.speed"
        await client.send(
            {"type": "session.update", "session": {"type": "realtime", "audio": {"output": {"speed": 1.25}}}}
        )
        updated = await client.wait_for("session.updated")
        assert updated["session"]["audio"]["output"]["speed"] == 1.25
        await client.send({"type": "conversation.item.create", "item": user_text("hi")})
        await client.send({"type": "response.create"})
        done = await client.wait_for("response.done")
        audio = decode_audio_deltas(
            [
                e
                for e in client.of_type("response.output_audio.delta")
                if e["response_id"] == done["response"]["id"]
            ]
        )
    # FakeTts: 50 ms a character at speed 1 ("Ten chars." is 10): 400 ms at 1.25
    assert abs(len(audio) / 24 - 10 * 50 / 1.25) <= 45


async def test_an_unknown_voice_is_refused_and_openai_names_are_taken() -> None:
    from fastapi import FastAPI

    from server.http.app import create_app
    from server.model.backends.espeak_tts import load as load_espeak
    from server.model.cascade import CascadeModel
    from server.model.fakes import FAKE_AUDIO_SETTINGS, EnergyClassifierFactory, FakeAsr
    from server.settings import Settings

    model = CascadeModel(FakeAsr(), FakeLlm(), load_espeak())  # the real eSpeak voice
    app: FastAPI = create_app(Settings(**FAKE_AUDIO_SETTINGS), model=model, vad=EnergyClassifierFactory())  # type: ignore[arg-type]
    async with running_server(app) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        for voice in ("no-such-voice", "alloy", "en"):
            await client.send(
                {
                    "type": "session.update",
                    "session": {"type": "realtime", "audio": {"output": {"voice": voice}}},
                }
            )
        error = (await client.wait_for("error"))["error"]
        assert (error["param"], "no-such-voice" in error["message"]) == ("session.audio.output.voice", True)
        first = await client.wait_for("session.updated")
        second = await client.wait_for("session.updated", after=client.index_of(first) + 1)
        assert [
            first["session"]["audio"]["output"]["voice"],
            second["session"]["audio"]["output"]["voice"],
        ] == [
            "alloy",
            "en",
        ]


async def test_deleted_items_leave_the_history_and_cannot_be_retrieved() -> None:
    llm = FakeLlm(["First answer.", "Second answer."])
    async with running_server(fake_app(llm=llm)) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        for text in ("keep me", "forget me", "keep me"):  # two alike: deletion is by item, not text
            await client.send({"type": "conversation.item.create", "item": user_text(text)})
        await client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        first = await client.wait_for("response.done")
        ids = [e["item"]["id"] for e in client.of_type("conversation.item.added")]
        reply_id = first["response"]["output"][0]["id"]
        await client.send({"type": "conversation.item.delete", "item_id": ids[1]})
        assert (await client.wait_for("conversation.item.deleted"))["item_id"] == ids[1]
        await client.send({"type": "conversation.item.delete", "item_id": ids[2]})
        await client.send({"type": "conversation.item.delete", "item_id": reply_id})
        await client.send({"type": "conversation.item.delete", "item_id": "item_unknown"})
        unknown = await client.wait_for("error")
        assert (unknown["error"]["code"], unknown["error"]["param"]) == ("item_not_found", "item_id")
        assert [e["item_id"] for e in client.of_type("conversation.item.deleted")] == [
            ids[1],
            ids[2],
            reply_id,
        ]
        await client.send({"type": "conversation.item.retrieve", "item_id": ids[1]})
        gone = await client.wait_for("error", after=client.index_of(unknown) + 1)
        assert gone["error"]["code"] == "item_not_found"
        await client.send({"type": "conversation.item.create", "item": user_text("and now?")})
        await client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        await client.wait_for("response.done", after=client.index_of(first) + 1)
    assert [(m.role, m.text) for m in llm.calls[1]] == [("user", "keep me"), ("user", "and now?")]


@pytest.mark.parametrize(
    ("session", "param"),
    [
        ({"type": "realtime", "colour": "blue"}, "session.colour"),
        ({"type": "realtime", "audio": {"output": {"volume": 2}}}, "session.audio.output.volume"),
        ({"type": "realtime", "audio": {"side": {}}}, "session.audio.side"),
        ({"type": "realtime", "prompt": {"id": "pmpt_1"}}, "session.prompt"),
        ({"type": "realtime", "include": ["item.input_audio_transcription.logprobs"]}, "session.include"),
        ({"type": "realtime", "tracing": {"workflow_name": "x"}}, "session.tracing"),
        ({"type": "realtime", "truncation": "disabled"}, "session.truncation"),
        ({"modalities": ["text"], "frobnicate": True}, "session.frobnicate"),  # the beta shape
    ],
)
async def test_session_fields_this_server_cannot_honour_are_refused_by_name(
    session: dict[str, Any], param: str
) -> None:
    async with running_server(fake_app()) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        await client.send({"type": "session.update", "session": session})
        error = (await client.wait_for("error"))["error"]
        assert error["param"] == param
        await client.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "tracing": "auto", "truncation": "auto"},
            }
        )
        await client.wait_for("session.updated")  # what is taken is taken


async def test_items_go_at_the_end_and_audio_parts_are_refused_naming_them() -> None:
    async with running_server(fake_app()) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        await client.send({"type": "conversation.item.create", "item": user_text("first")})
        first = (await client.wait_for("conversation.item.added"))["item"]["id"]
        await client.send(
            {"type": "conversation.item.create", "previous_item_id": first, "item": user_text("second")}
        )
        second = await client.wait_for("conversation.item.added", after=len(client.events))
        await client.send(
            {"type": "conversation.item.create", "previous_item_id": first, "item": user_text("third")}
        )
        refused = await client.wait_for("error")
        assert (
            refused["error"]["param"] == "previous_item_id"
            and second["item"]["id"] in refused["error"]["message"]
        )
        audio_part = {"type": "input_audio", "audio": "AAAA"}
        await client.send(
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "content": [audio_part]},
            }
        )
        second_error = await client.wait_for("error", after=client.index_of(refused) + 1)
        assert second_error["error"]["param"] == "item.content[0].type"


async def test_a_system_note_joins_the_history_the_model_reads() -> None:
    llm = FakeLlm(["Noted."])
    async with running_server(fake_app(llm=llm)) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        note = {
            "type": "message",
            "role": "system",
            "content": [{"type": "input_text", "text": "The caller is a gold member."}],
        }
        await client.send({"type": "conversation.item.create", "item": note})
        added = (await client.wait_for("conversation.item.added"))["item"]
        assert (added["role"], added["content"]) == ("system", note["content"])
        bad = {"type": "message", "role": "system", "content": [{"type": "input_image", "image_url": "x"}]}
        await client.send({"type": "conversation.item.create", "item": bad})
        assert (await client.wait_for("error"))["error"]["param"] == "item.content"
        await client.send({"type": "conversation.item.create", "item": user_text("what am I?")})
        await client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        await client.wait_for("response.done")
    assert [(m.role, m.text) for m in llm.calls[0]] == [
        ("system", "The caller is a gold member."),
        ("user", "what am I?"),
    ]
