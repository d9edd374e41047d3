"""The `realtime` profile over real sockets: a client -> this gateway (in the test) -> a second
Voxgate process (subprocess) serving instant FAKE models (loadtests/fake_server.py: FakeAsr,
FakeLlm, FakeTts, the energy VAD). The gateway's own VAD ends the turns (the default)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import websockets

from server.audio import PcmFrame
from server.http.app import create_app
from server.model.fakes import FAKE_AUDIO_SETTINGS, EnergyClassifierFactory, tone
from server.settings import Settings
from tests.harness import RealtimeTestClient, decode_audio_deltas, realtime_client, running_server
from tests.model.upstream_process import (
    UpstreamProcess,
    deltas_of,
    free_port,
    gateway_client,
    talk_over_the_reply,
    upstream,
)

REPLY = "Your parcel left the warehouse this morning and should arrive on Thursday afternoon."
REPLY_MS = len(REPLY) * 50  # FakeTts: 50 ms of tone a character


async def speak(client: RealtimeTestClient) -> None:
    """A tone turn at real time: 'speech' to the gateway's energy VAD, then silence."""
    await client.stream(tone(600))
    await client.stream(PcmFrame.silence(500, 24_000))


async def test_a_turn_through_the_gateway(tmp_path: Path) -> None:
    with upstream(tmp_path, REPLY) as up:
        async with gateway_client(up.url) as client:
            transcription = {"audio": {"input": {"transcription": {"model": "voxgate-asr"}}}}
            await client.send({"type": "session.update", "session": {"type": "realtime", **transcription}})
            await speak(client)
            done = await client.wait_for("response.done", timeout_s=REPLY_MS / 1000 + 10)
            assert done["response"]["status"] == "completed", done
            response_id = done["response"]["id"]
            audio = decode_audio_deltas(deltas_of(client, response_id))
            assert abs(len(audio) / 24 - REPLY_MS) <= 60  # the upstream's whole reply, relayed
            text = "".join(e["delta"] for e in client.of_type("response.output_audio_transcript.delta"))
            assert text.split() == REPLY.split()
            # the upstream transcribed the turn; the gateway relays it (FakeAsr: "hello there")
            heard = await client.wait_for("conversation.item.input_audio_transcription.completed")
            assert heard["transcript"] == "hello there"
    assert len(up.events("UserTurn")) == 1


async def test_barge_in_truncates_the_upstream_item_to_what_was_heard(tmp_path: Path) -> None:
    with upstream(tmp_path, REPLY) as up:
        async with gateway_client(up.url) as client:
            await speak(client)
            cancelled = await talk_over_the_reply(client, up)
            # the next turn is answered
            second = await client.wait_for(
                "response.done", timeout_s=15, after=client.index_of(cancelled) + 1
            )
            assert second["response"]["status"] in ("completed", "cancelled")


async def test_upstream_killed_mid_reply_fails_the_response_and_the_next_turn_reconnects(
    tmp_path: Path,
) -> None:
    up = UpstreamProcess(free_port(), tmp_path / "events.jsonl", REPLY)
    up.start()
    try:
        async with gateway_client(up.url) as client:
            await speak(client)
            await client.wait_for("response.output_audio.delta", timeout_s=10)
            up.kill()
            failed = await client.wait_for("response.done", timeout_s=10)
            assert failed["response"]["status"] == "failed", failed
            error = await client.wait_for("error")
            assert error["error"]["code"] == "backend_error"
            assert "upstream" in error["error"]["message"]

            await asyncio.to_thread(up.start)  # the upstream comes back on the same address
            mark = len(client.events)
            await speak(client)
            done = await client.wait_for("response.done", timeout_s=REPLY_MS / 1000 + 10, after=mark)
            assert done["response"]["status"] == "completed", done
            assert deltas_of(client, done["response"]["id"])
    finally:
        up.kill()


async def test_upstream_refusing_the_key_is_a_clear_error_and_the_session_lives(tmp_path: Path) -> None:
    with upstream(tmp_path, REPLY, api_key="right-key") as up:
        async with gateway_client(up.url, api_key="wrong-key") as client:
            await speak(client)
            failed = await client.wait_for("response.done", timeout_s=10)
            assert failed["response"]["status"] == "failed"
            error = await client.wait_for("error")
            assert "HTTP 401" in error["error"]["message"], error
            assert "wrong-key" not in json.dumps(client.events)
            mark = len(client.events)
            await speak(client)  # still connected: the next turn tries again, and fails the same way
            again = await client.wait_for("response.done", timeout_s=10, after=mark)
            assert again["response"]["status"] == "failed"


async def test_a_silent_upstream_fails_the_turn_within_the_deadline() -> None:
    """An upstream that accepts the socket and never answers (a real websocket server)."""

    async def mute(ws: websockets.ServerConnection) -> None:
        await ws.wait_closed()

    async with websockets.serve(mute, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        settings = Settings.model_validate(
            {
                **FAKE_AUDIO_SETTINGS,
                "profile": "realtime",
                "backend_options": {"realtime": {"url": f"ws://127.0.0.1:{port}/v1/realtime"}},
                "asr_final_timeout_s": 1.0,
            }
        )
        app = create_app(settings, vad=EnergyClassifierFactory())
        async with running_server(app) as gateway, realtime_client(gateway) as client:
            await client.wait_for("session.created")
            await speak(client)
            failed = await client.wait_for("response.done", timeout_s=10)
            assert failed["response"]["status"] == "failed"
            error = await client.wait_for("error")
            assert error["error"]["code"] == "model_timeout", error


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({}, "url"),
        ({"url": "http://example.com"}, "ws://"),
        ({"url": "ws://x", "turn_detection": "both"}, "turn_detection"),
        ({"url": "ws://x", "colour": "red"}, "colour"),
    ],
)
def test_bad_options_are_refused_at_load(options: dict[str, object], complaint: str) -> None:
    from server.model.backends.realtime_upstream import load

    with pytest.raises(ValueError, match=complaint):
        load(options)


def test_upstream_events_are_parsed_and_malformed_ones_refused() -> None:
    from server.errors import BackendError
    from server.model.backends import realtime_wire as wire

    audio = wire.parse_upstream_event(
        '{"type":"response.audio.delta","response_id":"r","item_id":"i","delta":"AAAA"}'
    )
    assert audio == wire.AudioDelta("r", "i", b"\0\0\0")
    failed = wire.parse_upstream_event(
        json.dumps(
            {
                "type": "response.done",
                "response": {"id": "r", "status": "failed", "status_details": {"error": {"message": "boom"}}},
            }
        )
    )
    assert failed == wire.ResponseDone("r", "failed", "boom")
    assert wire.parse_upstream_event('{"type":"rate_limits.updated"}') is None
    for bad in ("not json", '{"no":"type"}', '{"type":"response.output_audio.delta","delta":"AAAA"}', b"\0"):
        with pytest.raises(BackendError):
            wire.parse_upstream_event(bad)


def test_the_model_name_and_key_go_where_the_upstream_reads_them() -> None:
    from server.model.backends.realtime_upstream import RealtimeUpstreamOptions

    options = RealtimeUpstreamOptions.from_mapping(
        {"url": "wss://api.example.com/v1/realtime", "model": "gpt-realtime", "api_key": "k"}
    )
    assert options.connect_url() == "wss://api.example.com/v1/realtime?model=gpt-realtime"
    assert options.connect_headers() == {"Authorization": "Bearer k"}
    pinned = RealtimeUpstreamOptions.from_mapping({"url": "ws://h/v1/realtime?model=a", "model": "b"})
    assert pinned.connect_url() == "ws://h/v1/realtime?model=a"


def test_images_go_upstream_as_input_image_parts() -> None:
    from server.model.backends import realtime_upstream, realtime_wire
    from server.model.base import ImageInput

    png = ImageInput("image/png", b"\x89PNG\r\n\x1a\nrest", "high")
    event = realtime_wire.message_item_event("e1", "user", "what is this", [png])
    assert event["item"]["content"] == [
        {"type": "input_text", "text": "what is this"},
        {"type": "input_image", "image_url": png.data_url, "detail": "high"},
    ]
    image_only = realtime_wire.message_item_event("e2", "user", "", [png])
    assert [p["type"] for p in image_only["item"]["content"]] == ["input_image"]
    model = realtime_upstream.load({"url": "ws://127.0.0.1:9/v1/realtime"})
    assert model.capabilities.accepts_images  # the upstream model decides what it can see
