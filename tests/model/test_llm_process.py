"""The language model in a worker process: a crash fails one reply, never the server.

The fast tests drive the real worker process with a fake engine (tests/model/fake_llm_engine.py)
and kill it the way a native crash would; the slow one does the same to the real Gemma worker
under a running server, through two websocket sessions.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.errors import BackendError, BackendUnavailable
from server.model.backends.gemma_llm import TurnStats
from server.model.base import Message, SessionOptions
from server.model.llm_process import LlmProcess

FAKE = "tests.model.fake_llm_engine:load"


def start_fake(**options: Any) -> LlmProcess:
    return LlmProcess.start(FAKE, options, None, TurnStats)


@pytest.fixture
def fake_llm() -> Iterator[LlmProcess]:
    llm = start_fake(word_s=0.05)
    yield llm
    llm.close()


def said(text: str) -> list[Message]:
    return [Message("user", text)]


async def reply(llm: LlmProcess, text: str) -> str:
    return "".join([piece async for piece in llm.complete(said(text), SessionOptions())])


async def test_replies_stream_from_the_worker(fake_llm: LlmProcess) -> None:
    pieces = [piece async for piece in fake_llm.complete(said("two words"), SessionOptions())]
    assert pieces == ["you", " said:", " two", " words"]
    assert fake_llm.last_stats == TurnStats(
        1, 1, False, fake_llm.last_stats.wait_ms, 50.0, 4, fake_llm.last_stats.decode_ms, False
    )
    assert fake_llm.health()["state"] == "ok"


async def test_closing_a_turn_early_stops_the_worker_and_frees_it(fake_llm: LlmProcess) -> None:
    async with aclosing(fake_llm.complete(said("a b c d e f g h i j k l"), SessionOptions())) as pieces:
        assert await anext(pieces) == "you"
    assert fake_llm.last_stats is not None and fake_llm.last_stats.stopped_by_consumer
    assert fake_llm.last_stats.generated_tokens <= 2
    assert await reply(fake_llm, "next") == "you said: next"  # not queued behind the closed one


async def test_a_killed_worker_fails_its_reply_and_the_waiting_turns_are_answered(
    fake_llm: LlmProcess,
) -> None:
    first_pid = fake_llm.worker_pid
    assert first_pid is not None
    crashing = fake_llm.complete(said("this reply will not finish"), SessionOptions())
    assert await anext(crashing) == "you"
    waiting = asyncio.create_task(reply(fake_llm, "i was waiting"))  # queued behind the crashing one
    await asyncio.sleep(0.02)
    os.kill(first_pid, signal.SIGSEGV)
    with pytest.raises(BackendError, match=r"crashed \(SIGSEGV\) during this reply"):
        async for _ in crashing:
            pass
    assert await asyncio.wait_for(waiting, 30) == "you said: i was waiting"
    assert await reply(fake_llm, "and after") == "you said: and after"
    health = fake_llm.health()
    assert health["state"] == "ok" and health["restarts"] == 1
    assert health["pid"] != first_pid
    assert "SIGSEGV" in str(health["last_crash"])


async def test_a_worker_that_cannot_come_back_fails_the_backend_clearly(tmp_path: Path) -> None:
    marker = tmp_path / "crash-on-load"
    llm = start_fake(word_s=0.05, crash_marker=str(marker))
    try:
        marker.touch()  # every new worker now crashes while loading
        pid = llm.worker_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        for _ in range(300):
            if llm.health()["state"] == "failed":
                break
            await asyncio.sleep(0.1)
        health = llm.health()
        assert health["state"] == "failed", health
        assert "SIGKILL" in str(health["last_crash"]) and "SIGSEGV" in str(health["last_crash"])
        with pytest.raises(BackendUnavailable, match="unavailable"):
            await reply(llm, "anyone there")
    finally:
        llm.close()


def test_a_worker_that_crashes_while_loading_names_the_fix(tmp_path: Path) -> None:
    marker = tmp_path / "crash-on-load"
    marker.touch()
    with pytest.raises(BackendUnavailable, match=r"crashed \(SIGSEGV\) while loading.*install_llama_cpp"):
        start_fake(crash_marker=str(marker))


def test_an_engine_that_fails_to_load_is_reported() -> None:
    with pytest.raises(BackendUnavailable, match="could not load the model.*No module named"):
        LlmProcess.start("no-such-engine", {}, None, TurnStats)


# --- the real Gemma worker under a running server (slow) ---------------------------------


@pytest.fixture(scope="module")
def gemma_installed() -> None:
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (run scripts/install_llama_cpp.sh)")


@pytest.fixture
async def gemma_server(gemma_installed: None) -> AsyncIterator[str]:
    from server.http.app import create_app
    from server.settings import Settings
    from tests.harness import running_server

    app = create_app(Settings(asr="pocketsphinx", llm="gemma", tts="espeak", vad="webrtc"))
    async with running_server(app) as url:
        yield url


async def llm_health(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        response = await http.get(url + "/healthz")
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.slow
async def test_killing_the_gemma_worker_mid_reply_fails_that_reply_only(gemma_server: str) -> None:
    from tests.harness import realtime_client

    health = await llm_health(gemma_server)
    assert health["status"] == "ok"
    before = health["backends"]["language model gemma"]
    assert before["state"] == "ok" and before["restarts"] == 0
    async with realtime_client(gemma_server) as caller, realtime_client(gemma_server) as other:
        await caller.say("Hi, I ordered a jacket last week and it still hasn't arrived.")
        for _ in range(3000):  # until the worker is on the caller's reply
            if (await llm_health(gemma_server))["backends"]["language model gemma"]["generating"]:
                break
            await asyncio.sleep(0.01)
        await other.say("Do you ship to Canada?")  # waits its turn behind the caller's reply
        os.kill(before["pid"], signal.SIGSEGV)

        error = await caller.wait_for("error", timeout_s=30)
        assert "crashed (SIGSEGV)" in error["error"]["message"]
        done = await caller.wait_for("response.done", timeout_s=30)
        assert done["response"]["status"] == "failed"

        other_done = await other.wait_for("response.done", timeout_s=60)
        assert other_done["response"]["status"] == "completed"
        assert not other.of_type("error")
        assert other.of_type("response.output_audio.delta")

        after = len(caller.events)
        await caller.say("Can I pay by card?")
        again = await caller.wait_for("response.done", timeout_s=60, after=after)
        assert again["response"]["status"] == "completed"
        assert [e for e in caller.events[after:] if e["type"] == "response.output_audio.delta"]

    health = await llm_health(gemma_server)
    now = health["backends"]["language model gemma"]
    assert health["status"] == "ok" and now["state"] == "ok"
    assert now["restarts"] == 1 and now["pid"] != before["pid"]
    assert "SIGSEGV" in now["last_crash"]


async def test_end_of_turn_requests_are_answered_in_order_with_replies(fake_llm: LlmProcess) -> None:
    reply_task = asyncio.create_task(reply(fake_llm, "one two three"))
    complete = await fake_llm.end_of_turn_probability([], "one more thing please", SessionOptions())
    partial = await fake_llm.end_of_turn_probability([], "one more thing", SessionOptions())
    assert (complete, partial) == (0.9, 0.01)
    assert await reply_task == "you said: one two three"
