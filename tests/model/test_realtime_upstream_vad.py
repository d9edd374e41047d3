"""The `realtime` profile with the upstream's VAD (`turn_detection: "upstream"`), over real
sockets: a client -> this gateway (in the test) -> a second Voxgate process serving instant
FAKE models and its energy VAD (tests/model/upstream_process.py), or a scripted websocket
upstream where the exact events matter.

The gateway's own VAD is a FAKE that never hears speech (`DEAF`): every turn below was found
by the upstream."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from pathlib import Path
from typing import Any

import websockets

from server.audio import PcmFrame
from server.http.app import create_app
from server.http.session_setup import SessionRequest, SessionSetup
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
DEAF = EnergyClassifierFactory(rms_threshold=1e9)  # a FAKE local VAD: nothing is ever speech


def upstream_vad_client(
    url: str, **options: object
) -> contextlib.AbstractAsyncContextManager[RealtimeTestClient]:
    """A client of a gateway whose turns the upstream's VAD ends (its own VAD is DEAF)."""
    return gateway_client(url, DEAF, turn_detection="upstream", **options)


async def test_the_upstreams_vad_ends_the_turn_and_the_gateway_answers_it(tmp_path: Path) -> None:
    with upstream(tmp_path, REPLY) as up:
        async with upstream_vad_client(up.url) as client:
            await client.stream(PcmFrame.silence(400, 24_000))
            await client.stream(tone(600))
            await client.stream(PcmFrame.silence(700, 24_000))
            started = await client.wait_for("input_audio_buffer.speech_started")
            stopped = await client.wait_for("input_audio_buffer.speech_stopped")
            # the upstream's times, on this session's input clock
            assert 360 <= started["audio_start_ms"] <= 440, started
            assert 960 <= stopped["audio_end_ms"] <= 1040, stopped
            committed = await client.wait_for("input_audio_buffer.committed")
            assert committed["item_id"] == started["item_id"]
            done = await client.wait_for("response.done", timeout_s=REPLY_MS / 1000 + 10)
            assert done["response"]["status"] == "completed", done
            audio = decode_audio_deltas(deltas_of(client, done["response"]["id"]))
            assert abs(len(audio) / 24 - REPLY_MS) <= 60
            assert len(client.of_type("response.created")) == 1
    # one turn upstream, answered once: the upstream did not start a reply of its own
    assert len(up.events("UserTurn")) == 1
    assert len(up.events("AssistantTurn")) == 1


async def test_speech_over_the_reply_cancels_it_and_truncates_the_upstream_item(tmp_path: Path) -> None:
    with upstream(tmp_path, REPLY) as up:
        async with upstream_vad_client(up.url) as client:
            await client.stream(tone(600))
            await client.stream(PcmFrame.silence(500, 24_000))
            cancelled = await talk_over_the_reply(client, up)
            # the interruption is the next turn, found by the upstream and answered
            second = await client.wait_for(
                "response.done", timeout_s=15, after=client.index_of(cancelled) + 1
            )
            assert second["response"]["status"] in ("completed", "cancelled")
            assert len(client.of_type("input_audio_buffer.speech_started")) == 2


async def test_an_upstream_that_goes_away_is_reported_once_and_turns_resume_when_it_is_back(
    tmp_path: Path,
) -> None:
    up = UpstreamProcess(free_port(), tmp_path / "events.jsonl", REPLY)
    up.start()
    try:
        async with upstream_vad_client(up.url) as client:
            await client.stream(PcmFrame.silence(300, 24_000))
            up.kill()
            error = await client.wait_for("error", timeout_s=10)
            assert error["error"]["code"] == "backend_error"
            assert "turn detection is unavailable" in error["error"]["message"], error
            await client.stream(PcmFrame.silence(1500, 24_000))  # retries fail meanwhile: no new error
            assert len(client.of_type("error")) == 1
            await asyncio.to_thread(up.start)  # back on the same address
            await asyncio.sleep(RECONNECT_WAIT_S)
            mark = len(client.events)
            await client.stream(tone(600))
            await client.stream(PcmFrame.silence(600, 24_000))
            done = await client.wait_for("response.done", timeout_s=REPLY_MS / 1000 + 10, after=mark)
            assert done["response"]["status"] == "completed", done
    finally:
        up.kill()


RECONNECT_WAIT_S = 2.5  # > the backoff reached after ~2 s of failures (0.5 + 1 + ...)


# --- a scripted upstream: what the gateway asks of it, exactly ----------------------------


class ScriptedUpstream:
    """A websocket upstream that records the client events and, once it has heard
    `speech_after_ms` of audio, reports speech from `start_ms` to `end_ms` of its buffer,
    commits it; it commits when asked, and answers each response.create with 100 ms of
    silence."""

    def __init__(self, start_ms: int, end_ms: int, speech_after_ms: int) -> None:
        self.start_ms, self.end_ms, self.speech_after_ms = start_ms, end_ms, speech_after_ms
        self.received: list[dict[str, Any]] = []

    async def serve(self, ws: websockets.ServerConnection) -> None:
        heard_ms = 0.0
        reported = False
        responses = 0
        async for message in ws:
            event = json.loads(message)
            if event["type"] != "input_audio_buffer.append":
                self.received.append(event)
            if event["type"] == "input_audio_buffer.append":
                heard_ms += len(base64.b64decode(event["audio"])) / 48
                if not reported and heard_ms >= self.speech_after_ms:
                    reported = True
                    await send(
                        ws,
                        type="input_audio_buffer.speech_started",
                        audio_start_ms=self.start_ms,
                        item_id="u1",
                    )
                    await send(
                        ws, type="input_audio_buffer.speech_stopped", audio_end_ms=self.end_ms, item_id="u1"
                    )
                    await send(ws, type="input_audio_buffer.committed", item_id="u1", previous_item_id=None)
            elif event["type"] == "input_audio_buffer.commit":
                await send(ws, type="input_audio_buffer.committed", item_id="u2", previous_item_id=None)
            elif event["type"] == "response.create":
                responses += 1
                rid, iid = f"r{responses}", f"a{responses}"
                await send(ws, type="response.created", response={"id": rid})
                await send(
                    ws,
                    type="response.output_item.added",
                    response_id=rid,
                    item={"type": "message", "id": iid},
                )
                pcm = base64.b64encode(bytes(4800)).decode()
                await send(ws, type="response.output_audio.delta", response_id=rid, item_id=iid, delta=pcm)
                await send(
                    ws,
                    type="response.output_audio_transcript.delta",
                    response_id=rid,
                    item_id=iid,
                    delta="ok",
                )
                await send(ws, type="response.done", response={"id": rid, "status": "completed"})


async def send(ws: websockets.ServerConnection, **event: Any) -> None:
    await ws.send(json.dumps(event))


async def test_the_clients_vad_settings_go_upstream_reporting_only_and_no_commit_is_sent() -> None:
    script = ScriptedUpstream(start_ms=200, end_ms=900, speech_after_ms=1000)
    async with websockets.serve(script.serve, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with upstream_vad_client(
            f"ws://127.0.0.1:{port}/v1/realtime", transcription_model=""
        ) as client:
            turn_detection = {"type": "semantic_vad", "eagerness": "high"}
            await client.send(
                {
                    "type": "session.update",
                    "session": {"type": "realtime", "audio": {"input": {"turn_detection": turn_detection}}},
                }
            )
            await client.wait_for("session.updated")
            await client.stream(PcmFrame.silence(1200, 24_000))
            started = await client.wait_for("input_audio_buffer.speech_started")
            stopped = await client.wait_for("input_audio_buffer.speech_stopped")
            assert (started["audio_start_ms"], stopped["audio_end_ms"]) == (200, 900)
            done = await client.wait_for("response.done", timeout_s=10)
            assert done["response"]["status"] == "completed", done
    updates = [
        e["session"]["audio"]["input"]["turn_detection"]
        for e in script.received
        if e["type"] == "session.update"
    ]
    assert updates[-1] == {
        "type": "semantic_vad",
        "eagerness": "high",
        "create_response": False,
        "interrupt_response": False,
    }
    kinds = [e["type"] for e in script.received]
    assert "input_audio_buffer.commit" not in kinds  # the upstream's own commit was adopted
    assert kinds.count("response.create") == 1
    assert kinds.index("response.create") > kinds.index("session.update")


async def test_manual_commits_still_work_with_the_upstreams_vad_off() -> None:
    """A client with `turn_detection: null` commits itself: the upstream's VAD is off too."""
    script = ScriptedUpstream(start_ms=0, end_ms=0, speech_after_ms=10**9)  # never reports speech
    async with websockets.serve(script.serve, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with upstream_vad_client(
            f"ws://127.0.0.1:{port}/v1/realtime", transcription_model=""
        ) as client:
            await client.send(
                {
                    "type": "session.update",
                    "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
                }
            )
            await client.wait_for("session.updated")
            await client.stream(PcmFrame.silence(300, 24_000), realtime=False)
            await client.send({"type": "input_audio_buffer.commit"})
            await client.send({"type": "response.create"})
            done = await client.wait_for("response.done", timeout_s=10)
            assert done["response"]["status"] == "completed", done
    updates = [e for e in script.received if e["type"] == "session.update"]
    assert updates[-1]["session"]["audio"]["input"]["turn_detection"] is None
    assert [e["type"] for e in script.received].count("input_audio_buffer.commit") == 1


async def test_a_session_setup_can_keep_the_gateways_vad_for_its_session() -> None:
    """Embedding code chooses per session: this one keeps Voxgate's VAD (a FAKE energy VAD
    that hears the tone), so the upstream's VAD is off and the gateway commits."""
    script = ScriptedUpstream(start_ms=0, end_ms=0, speech_after_ms=10**9)  # never reports speech

    async def setup(request: SessionRequest) -> SessionSetup:
        return SessionSetup(turns_detected_by="gateway")

    async with websockets.serve(script.serve, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        settings = Settings.model_validate(
            {
                **FAKE_AUDIO_SETTINGS,
                "profile": "realtime",
                "backend_options": {
                    "realtime": {
                        "url": f"ws://127.0.0.1:{port}/v1/realtime",
                        "turn_detection": "upstream",
                        "transcription_model": "",
                    }
                },
            }
        )
        app = create_app(settings, vad=EnergyClassifierFactory(), session_setup=setup)
        async with running_server(app) as gateway, realtime_client(gateway) as client:
            await client.wait_for("session.created")
            await client.stream(tone(600))
            await client.stream(PcmFrame.silence(600, 24_000))
            await client.wait_for("input_audio_buffer.speech_stopped")
            done = await client.wait_for("response.done", timeout_s=10)
            assert done["response"]["status"] == "completed", done
    updates = [e for e in script.received if e["type"] == "session.update"]
    assert all(u["session"]["audio"]["input"]["turn_detection"] is None for u in updates)
    assert [e["type"] for e in script.received].count("input_audio_buffer.commit") == 1


async def test_a_greeting_asks_the_upstream_to_say_it_as_it_is() -> None:
    """An upstream realtime model takes no words to speak, only instructions: the server's
    greeting (VOXGATE_GREETING) opens the session as a response.create asking for exactly it."""
    greeting = "Thank you for calling Acme. How can I help?"
    script = ScriptedUpstream(start_ms=0, end_ms=0, speech_after_ms=10**9)
    async with websockets.serve(script.serve, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        settings = Settings.model_validate(
            {
                **FAKE_AUDIO_SETTINGS,
                "profile": "realtime",
                "greeting": greeting,
                "backend_options": {
                    "realtime": {"url": f"ws://127.0.0.1:{port}/v1/realtime", "transcription_model": ""}
                },
            }
        )
        app = create_app(settings, vad=DEAF)
        async with running_server(app) as gateway, realtime_client(gateway) as client:
            await client.wait_for("session.created")
            done = await client.wait_for("response.done", timeout_s=10)  # nothing was said to it
            assert done["response"]["status"] == "completed", done
    (create,) = [e for e in script.received if e["type"] == "response.create"]
    assert f'"{greeting}"' in create["response"]["instructions"]
    assert "word for word" in create["response"]["instructions"]
