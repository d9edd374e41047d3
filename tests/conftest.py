from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from server.events import EventHandler
from server.http.app import create_app
from server.model.cascade import CascadeModel
from server.model.fakes import FAKE_AUDIO_SETTINGS, EnergyClassifierFactory, FakeAsr, FakeLlm, FakeTts
from server.settings import Settings
from tests.harness import running_server
from tests.redis_server import RedisProcess, redis_server


def fake_app(
    asr: FakeAsr | None = None,
    llm: FakeLlm | None = None,
    tts: FakeTts | None = None,
    on_event: EventHandler | None = None,
    **settings: object,
) -> FastAPI:
    model = CascadeModel(asr or FakeAsr(), llm or FakeLlm(), tts or FakeTts())
    settings = {**FAKE_AUDIO_SETTINGS, **settings}  # unless a test asks for echo cancellation
    return create_app(Settings(**settings), model=model, vad=EnergyClassifierFactory(), on_event=on_event)  # type: ignore[arg-type]


@pytest.fixture
async def fake_server() -> AsyncIterator[str]:
    async with running_server(fake_app()) as url:
        yield url


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A real redis-server of this test's own (tests/redis_server.py)."""
    with redis_server(tmp_path) as process:
        yield process
