"""loadtests/measure_greeting.py against a server of FAKE models (tests/conftest.py)."""

from __future__ import annotations

import pytest

from loadtests.measure_greeting import NoGreeting, main, measure
from tests.conftest import fake_app
from tests.harness import running_server

GREETING = "Thanks for calling."


async def test_it_times_the_greeting_of_each_session() -> None:
    async with running_server(fake_app(greeting=GREETING)) as url:
        rows = await measure(url.replace("http://", "ws://") + "/v1/realtime", 2, {}, wait_s=10.0)
    assert [r.transcript for r in rows] == [GREETING, GREETING]
    # FakeTts: 50 ms of audio a character, played out in real time after the first chunk
    assert all(0 <= r.first_audio_ms < r.done_ms and r.done_ms >= len(GREETING) * 50 - 200 for r in rows)


async def test_a_server_without_a_greeting_is_reported_not_waited_for_forever() -> None:
    async with running_server(fake_app()) as url:
        with pytest.raises(NoGreeting):
            await measure(url.replace("http://", "ws://") + "/v1/realtime", 1, {}, wait_s=1.0)


def test_sessions_must_be_at_least_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--sessions", "0"])
    assert "--sessions must be at least 1" in capsys.readouterr().err
