"""Speculative replies: prepared during the end-of-turn silence, unheard until the turn ends."""

from __future__ import annotations

import asyncio

from server.audio import PcmFrame
from server.model.fakes import FakeAsr, FakeLlm, tone
from tests.conftest import fake_app
from tests.harness import realtime_client, running_server


class TimedLlm(FakeLlm):
    """FakeLlm that records when each call started (loop time)."""

    started: list[float]

    def complete(self, history, options):  # type: ignore[no-untyped-def]
        self.__dict__.setdefault("started", []).append(asyncio.get_running_loop().time())
        return super().complete(history, options)


async def test_prepared_reply_is_adopted_at_the_end_of_the_turn() -> None:
    llm = TimedLlm(["Your refund is on its way."], delay_s=0.02)
    app = fake_app(FakeAsr(["refund please"]), llm, silence_duration_ms=500, speculative_silence_ms=100)
    async with running_server(app) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        await client.stream(tone(500))
        await client.stream(PcmFrame.silence(800, 24_000))
        stopped = await client.wait_for("input_audio_buffer.speech_stopped")
        done = await client.wait_for("response.done")
        assert done["response"]["status"] == "completed"
        # the language model started during the silence, before the turn was declared over
        assert len(llm.calls) == 1
        assert llm.started[0] < stopped["_t"]
        # but nothing of the reply reached the client before speech_stopped
        first_reply_event = min(
            client.index_of(e) for e in client.events if e["type"].startswith("response.")
        )
        assert first_reply_event > client.index_of(stopped)
        committed = client.of_type("input_audio_buffer.committed")[0]
        transcript = client.of_type("conversation.item.input_audio_transcription.completed")[0]
        assert client.index_of(committed) < client.index_of(transcript) < first_reply_event
        assert transcript["transcript"] == "refund please"


async def test_prepared_reply_is_discarded_unheard_when_the_user_goes_on() -> None:
    llm = FakeLlm(["First answer that must never be heard.", "The real answer."], delay_s=0.02)
    asr = FakeAsr(["i want", "i want a refund"])
    app = fake_app(asr, llm, silence_duration_ms=500, speculative_silence_ms=100)
    async with running_server(app) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        await client.stream(tone(400))
        await client.stream(PcmFrame.silence(300, 24_000))  # long enough to prepare, not to end
        await client.stream(tone(400))
        await client.stream(PcmFrame.silence(800, 24_000))
        done = await client.wait_for("response.done")
        assert done["response"]["status"] == "completed"
        assert len(client.of_type("response.created")) == 1
        assert len(client.of_type("input_audio_buffer.speech_started")) == 1
        transcripts = [e["delta"] for e in client.of_type("response.output_audio_transcript.delta")]
        assert "".join(transcripts).strip() == "The real answer."
        # the abandoned speculation was rolled back: the model saw the user's turn once
        assert [m.text for m in llm.calls[-1] if m.role == "user"] == ["i want a refund"]
        assert not [m for m in llm.calls[-1] if m.role == "assistant"]
        # the recogniser heard the whole turn again after the abandoned speculation
        assert asr.streams[-1].pushed_ms >= 1000
