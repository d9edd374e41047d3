"""Call parameters a voice webhook stores for a Twilio stream (PUT /v1/twilio/calls/{sid}):
validation, expiry, precedence under the stream's own customParameters, and the stream on
another replica reading them from a real redis-server. Apps serve FAKE models."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from server.http.app import create_app
from server.http.session_setup import SessionRequest, SessionSetup
from server.model.cascade import CascadeModel
from server.model.fakes import FAKE_AUDIO_SETTINGS, EnergyClassifierFactory, FakeAsr, FakeLlm, FakeTts
from server.settings import Settings
from server.telephony.call_parameters import LocalCallParameters
from tests.harness import running_server
from tests.redis_server import RedisProcess
from tests.telephony.twilio_caller import twilio_call

KEY = "sk-test-calls"
CALL = "CA0123456789abcdef0123456789abcdef"


def app_seeing_parameters(seen: list[dict[str, str]], **settings: Any) -> FastAPI:
    async def setup(request: SessionRequest) -> SessionSetup:
        seen.append(dict(request.parameters))
        return SessionSetup()

    model = CascadeModel(FakeAsr(), FakeLlm(), FakeTts())
    config = Settings(**{**FAKE_AUDIO_SETTINGS, "api_keys": [KEY], **settings})
    return create_app(config, model=model, vad=EnergyClassifierFactory(), session_setup=setup)


async def put(url: str, body: object, call_sid: str = CALL, key: str = KEY) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.put(
            f"{url}/v1/twilio/calls/{call_sid}", headers={"Authorization": f"Bearer {key}"}, json=body
        )


async def started_parameters(url: str, seen: list[dict[str, str]], custom: dict[str, str]) -> dict[str, str]:
    async with twilio_call(url) as caller:
        caller.call_sid = CALL
        await caller.connected()
        await caller.start(custom)
        for _ in range(200):  # the hook runs once the stream has started
            if seen:
                break
            await asyncio.sleep(0.02)
        await caller.stop()
    assert seen, "the session was never set up"
    return seen[-1]


async def test_stored_parameters_reach_the_stream_under_its_own() -> None:
    seen: list[dict[str, str]] = []
    async with running_server(app_seeing_parameters(seen)) as url:
        stored = await put(url, {"parameters": {"instructions": "Long prompt.", "tier": "gold"}, "ttl_s": 60})
        assert stored.status_code == 200, stored.text
        assert stored.json()["parameters"] == 2
        parameters = await started_parameters(url, seen, {"tier": "silver"})
    assert parameters["instructions"] == "Long prompt."
    assert parameters["tier"] == "silver"  # the stream's customParameters win
    assert parameters["call_sid"] == CALL


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        ({"parameters": {"a": 1}}, "parameters"),
        ({"parameters": "x"}, "parameters"),
        ({"parameters": {}, "ttl_s": 5}, "ttl_s"),
        ({"parameters": {}, "ttl_s": True}, "ttl_s"),
        ({"parameters": {}, "extra": 1}, "extra"),
        ({"parameters": {"instructions": "x" * 70_000}}, "parameters"),
        ({"parameters": {"greeting": "Hello. " * 200}}, "parameters.greeting"),
    ],
)
async def test_bad_requests_get_400_naming_the_field(body: object, param: str | None) -> None:
    async with running_server(app_seeing_parameters([])) as url:
        response = await put(url, body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


async def test_a_bad_call_sid_no_key_or_bad_json_is_refused() -> None:
    async with running_server(app_seeing_parameters([])) as url:
        assert (await put(url, {"parameters": {}}, call_sid="CA%20x")).json()["error"]["param"] == "call_sid"
        assert (await put(url, {"parameters": {}}, key="sk-wrong")).status_code == 401
        async with httpx.AsyncClient() as http:
            raw = await http.put(
                f"{url}/v1/twilio/calls/{CALL}", headers={"Authorization": f"Bearer {KEY}"}, content=b"{"
            )
        assert (raw.status_code, raw.json()["error"]["code"]) == (400, "invalid_json")


async def test_local_parameters_expire_and_stay_bounded() -> None:
    calls = LocalCallParameters(max_calls=2)
    await calls.put("CA1", {"a": "1"}, ttl_s=10, now_s=0)
    assert await calls.get("CA1", now_s=9.9) == {"a": "1"}
    assert await calls.get("CA1", now_s=10) is None
    for sid in ("CA2", "CA3", "CA4"):
        await calls.put(sid, {}, ttl_s=10, now_s=0)
    assert len(calls) == 2 and await calls.get("CA2", now_s=1) is None  # the oldest went first


async def test_parameters_stored_on_one_replica_reach_a_stream_on_another(redis: RedisProcess) -> None:
    seen: list[dict[str, str]] = []
    a = app_seeing_parameters([], redis_url=redis.url, replica_id="a")
    b = app_seeing_parameters(seen, redis_url=redis.url, replica_id="b")
    async with running_server(a) as url_a, running_server(b) as url_b:
        assert (await put(url_a, {"parameters": {"instructions": "From the webhook."}})).status_code == 200
        parameters = await started_parameters(url_b, seen, {})
        assert parameters["instructions"] == "From the webhook."
        redis.stop()  # Redis gone: storing is a clear 503, a call goes on with its TwiML parameters
        refused = await put(url_a, {"parameters": {}})
        assert (refused.status_code, refused.json()["error"]["code"]) == (503, "shared_state_unavailable")
        assert (await started_parameters(url_b, seen, {"voice": "alba"}))["voice"] == "alba"
