"""Bad input gets a clear `error` event or close reason; the server and other sessions go on."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
import pytest

from server.audio import PcmFrame
from server.model.fakes import FakeLlm, FakeTts, tone
from tests.conftest import fake_app
from tests.harness import realtime_client, running_server


async def error_for(url: str, raw: str | bytes) -> dict[str, Any]:
    async with realtime_client(url) as client:
        await client.wait_for("session.created")
        await client.ws.send(raw)
        error = await client.wait_for("error")
        # the session still works after the error
        await client.send({"type": "session.update", "session": {"instructions": "be brief"}})
        await client.wait_for("session.updated")
        return dict(error["error"])


@pytest.mark.parametrize(
    ("raw", "code", "param"),
    [
        ("{not json", "invalid_json", None),
        ("[1, 2, 3]", "invalid_json", None),
        ('{"no_type": 1}', "missing_field", "type"),
        ('{"type": "input_audio_buffer.explode"}', "unknown_event", "type"),
        ('{"type": "input_audio_buffer.append"}', "missing_field", "audio"),
        ('{"type": "input_audio_buffer.append", "audio": "@@not base64@@"}', "invalid_audio", "audio"),
        ('{"type": "input_audio_buffer.append", "audio": "AAEC"}', "invalid_audio", "audio"),  # 3 bytes
        (
            '{"type": "conversation.item.truncate", "item_id": "x", "content_index": 0}',
            "missing_field",
            "audio_end_ms",
        ),
        (
            '{"type": "conversation.item.truncate", "item_id": "nope", "content_index": 0, "audio_end_ms": 5}',
            "item_not_found",
            "item_id",
        ),
        (
            '{"type": "session.update", "session": {"input_audio_format": "mp3"}}',
            "invalid_value",
            "session.input_audio_format",
        ),
        (
            '{"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"format": '
            '{"type": "audio/pcm", "rate": 12345}}}}}',
            "invalid_value",
            "session.audio.input.format.rate",
        ),
        (
            '{"type": "session.update", "session": {"turn_detection": {"threshold": 7}}}',
            "invalid_value",
            "session.turn_detection.threshold",
        ),
        (
            '{"type": "session.update", "session": {"turn_detection": {"type": "semantic_vad", "eagerness": "eager"}}}',
            "invalid_value",
            "session.turn_detection.eagerness",
        ),
        (
            '{"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection":'
            ' {"type": "server_vad", "eagerness": "low"}}}}}',
            "invalid_value",
            "session.audio.input.turn_detection.eagerness",
        ),
        (
            '{"type": "session.update", "session": {"input_audio_noise_reduction": {"type": "loud_room"}}}',
            "invalid_value",
            "session.input_audio_noise_reduction.type",
        ),
        (
            '{"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"noise_reduction":'
            ' "near_field"}}}}',
            "invalid_value",
            "session.audio.input.noise_reduction",
        ),
        (
            '{"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"format": '
            '{"type": "audio/pcm", "rate": 44100}, "noise_reduction": {"type": "far_field"}}}}}',
            "invalid_value",
            "session.audio.input.noise_reduction",
        ),
        ('{"type": "input_audio_buffer.commit"}', "input_audio_buffer_commit_empty", None),
        ('{"type": "response.cancel"}', "response_cancel_not_active", None),
        (
            '{"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": []}}',
            "missing_field",
            "item.content",
        ),
        (b"\x00\x01binary", "invalid_frame", None),
    ],
)
async def test_bad_event_gets_error_event(
    fake_server: str, raw: str | bytes, code: str, param: str | None
) -> None:
    error = await error_for(fake_server, raw)
    assert error["code"] == code
    assert error["param"] == param
    assert error["message"]


async def test_rejected_session_update_changes_nothing(fake_server: str) -> None:
    async with realtime_client(fake_server) as client:
        await client.wait_for("session.created")
        await client.send(
            {"type": "session.update", "session": {"instructions": "changed?", "input_audio_format": "mp3"}}
        )
        await client.wait_for("error")
        await client.send({"type": "session.update", "session": {"voice": "en-gb"}})
        updated = await client.wait_for("session.updated")
        assert updated["session"]["instructions"] == ""
        assert updated["session"]["voice"] == "en-gb"


async def test_error_echoes_client_event_id(fake_server: str) -> None:
    error = await error_for(fake_server, json.dumps({"type": "response.cancel", "event_id": "evt_42"}))
    assert error["event_id"] == "evt_42"


async def test_append_over_15_mib_is_refused(fake_server: str) -> None:
    audio = base64.b64encode(b"\x00" * (15 * 2**20 + 2)).decode()
    error = await error_for(fake_server, json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
    assert error["code"] == "audio_too_large"


async def test_message_over_the_size_limit_closes_with_1009() -> None:
    app = fake_app()
    async with running_server(app) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        await client.ws.send("x" * (33 * 2**20))
        for _ in range(200):
            if client.closed is not None:
                break
            await asyncio.sleep(0.02)
        assert client.closed is not None and client.closed.rcvd is not None
        assert client.closed.rcvd.code == 1009


async def test_audio_faster_than_real_time_is_refused_beyond_the_allowance() -> None:
    app = fake_app(max_audio_ahead_ms=2000)
    async with running_server(app) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        await client.send({"type": "session.update", "session": {"turn_detection": None}})
        await client.append(PcmFrame.silence(1500, 24_000))  # within the allowance
        await client.append(PcmFrame.silence(1500, 24_000))  # 3 s of audio at t=0: too fast
        error = await client.wait_for("error")
        assert error["error"]["code"] == "audio_too_fast"
        await client.send({"type": "input_audio_buffer.commit"})
        committed = await client.wait_for("input_audio_buffer.committed")
        assert committed["item_id"]


async def test_disconnect_mid_reply_leaves_no_task_and_other_sessions_work() -> None:
    app = fake_app(llm=FakeLlm(["A long answer " * 30, "Short."]), tts=FakeTts(delay_s=0.001))
    async with running_server(app) as url:
        baseline = len(asyncio.all_tasks())
        async with realtime_client(url) as client:
            await client.wait_for("session.created")
            await client.stream(tone(500), realtime=False)
            await client.stream(PcmFrame.silence(600, 24_000), realtime=False)
            await client.wait_for("response.output_audio.delta")
        # the client is gone mid-reply; every task of its session must end
        for _ in range(200):
            if len(asyncio.all_tasks()) <= baseline:
                break
            await asyncio.sleep(0.02)
        names = sorted(t.get_name() for t in asyncio.all_tasks())
        assert len(asyncio.all_tasks()) <= baseline, names
        async with httpx.AsyncClient() as http:
            health = (await http.get(url + "/healthz")).json()
        assert health["sessions"] == 0
        async with realtime_client(url) as other:
            await other.wait_for("session.created")
            await other.say("hi")
            done = await other.wait_for("response.done")
            assert done["response"]["status"] == "completed"


async def test_backend_failure_mid_reply_fails_the_response_and_the_session_goes_on() -> None:
    llm = FakeLlm(["one two three four five six seven"], fail_after_words=3)
    app = fake_app(llm=llm)
    async with running_server(app) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        for _ in range(2):
            start = len(client.events)
            await client.say("hi")
            done = await client.wait_for("response.done", after=start)
            assert done["response"]["status"] == "failed"
            error = await client.wait_for("error", after=start)
            assert error["error"]["code"] == "backend_error"


async def test_metrics_and_health_endpoints(fake_server: str) -> None:
    async with httpx.AsyncClient() as http:
        assert (await http.get(fake_server + "/healthz")).json()["status"] == "ok"
        text = (await http.get(fake_server + "/metrics")).text
    assert "voxgate_voice_to_voice_seconds_bucket" in text
    assert 'le="0.3"' in text


async def test_output_format_changed_after_a_cleared_reply_applies_to_the_next_reply() -> None:
    """Found by the realtime fuzz test: a reply cut by output_audio_buffer.clear, then a
    session.update to mu-law, then a new reply: its 8 kHz audio went into the playout buffer
    still set up for 24 kHz, and the session failed (1011)."""
    app = fake_app(llm=FakeLlm(["A reply long enough to be playing when it is cleared."]))
    async with (
        running_server(app) as url,
        realtime_client(url, headers={"OpenAI-Beta": "realtime=v1"}) as client,
    ):
        await client.wait_for("session.created")
        await client.send({"type": "response.create"})
        await client.wait_for("response.audio.delta")
        await client.send({"type": "output_audio_buffer.clear"})
        await client.send({"type": "session.update", "session": {"output_audio_format": "g711_ulaw"}})
        await client.wait_for("session.updated")
        first_done = await client.wait_for("response.done")
        assert first_done["response"]["status"] == "cancelled"
        after = len(client.events)
        await client.send({"type": "response.create"})
        second_done = await client.wait_for("response.done", after=after)
        assert second_done["response"]["status"] == "completed"
        assert client.of_type("error") == []
        deltas = [e for e in client.events[after:] if e["type"] == "response.audio.delta"]
        mulaw_bytes = sum(len(base64.b64decode(e["delta"])) for e in deltas)
        # one byte per sample at 8 kHz: the fake speaks 50 ms per character
        assert mulaw_bytes == pytest.approx(
            len("A reply long enough to be playing when it is cleared.") * 400, rel=0.02
        )
