"""The websocket protocol end to end over a real socket, with fake models (named as such)."""

from __future__ import annotations

import asyncio

from server.audio import PcmFrame
from server.errors import BackendError
from server.http.app import create_app
from server.model.cascade import CascadeModel
from server.model.fakes import FAKE_AUDIO_SETTINGS, EnergyClassifier, FakeAsr, FakeLlm, FakeTts, tone
from server.settings import Settings
from server.vad.detector import QueuedClassifier
from tests.conftest import fake_app
from tests.harness import decode_audio_deltas, realtime_client, running_server


async def test_full_turn_ga_dialect() -> None:
    app = fake_app(FakeAsr(["where is my order"]), FakeLlm(["It ships tomorrow, thanks for waiting."]))
    async with running_server(app) as url, realtime_client(url) as client:
        created = await client.wait_for("session.created")
        assert created["session"]["type"] == "realtime"
        started, _ = await client.speak_tone_turn()
        committed = await client.wait_for("input_audio_buffer.committed")
        assert committed["item_id"] == started["item_id"]
        transcript = await client.wait_for("conversation.item.input_audio_transcription.completed")
        assert transcript["transcript"] == "where is my order"
        done = await client.wait_for("response.done")
        assert done["response"]["status"] == "completed"
        audio = decode_audio_deltas(client.of_type("response.output_audio.delta"))
        assert len(audio) > 24_000  # the fake speaks 50 ms per character
        final = client.of_type("response.output_audio_transcript.done")[0]
        assert final["transcript"] == "It ships tomorrow, thanks for waiting."


async def test_client_that_stops_sending_mid_turn_still_gets_a_reply() -> None:
    app = fake_app(FakeAsr(["cancel my order"]), FakeLlm(["Done."]))
    async with running_server(app) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        await client.stream(tone(600))  # then nothing: the microphone was switched off
        stopped = await client.wait_for("input_audio_buffer.speech_stopped")
        assert 580 <= stopped["audio_end_ms"] <= 620
        done = await client.wait_for("response.done")
        assert done["response"]["status"] == "completed"


async def test_transcription_deltas_are_increments() -> None:
    app = fake_app(FakeAsr(["please cancel my order today"]), FakeLlm(["Done."]))
    async with running_server(app) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        await client.stream(tone(600))
        await client.stream(PcmFrame.silence(500, 24_000))
        completed = await client.wait_for("conversation.item.input_audio_transcription.completed")
        deltas = client.of_type("conversation.item.input_audio_transcription.delta")
        assert deltas and "".join(d["delta"] for d in deltas) == "please cancel"
        assert completed["transcript"] == "please cancel my order today"


async def test_the_turn_ends_with_the_audio_that_completes_the_silence() -> None:
    """The end-of-turn deadline is checked as audio arrives, not when the VAD next completes a
    frame: the append that reaches speech end + silence_duration_ms ends the turn before the
    server reads the client's next message."""
    app = fake_app(FakeAsr(["hello"]), FakeLlm(["Hi."]), silence_duration_ms=250)
    async with running_server(app) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        await client.stream(PcmFrame.silence(200, 24_000))
        await client.stream(tone(600))
        # speech ends at 800 ms; 1050 ms falls inside the 20 ms VAD frame [1040, 1060)
        await client.append(PcmFrame.silence(250, 24_000))
        await client.send({"type": "session.update", "session": {"type": "realtime", "instructions": "x"}})
        updated = await client.wait_for("session.updated")
        stopped = await client.wait_for("input_audio_buffer.speech_stopped")
        assert stopped["audio_end_ms"] == 800
        assert client.index_of(stopped) < client.index_of(updated)


class HeldEnergyClassifier(QueuedClassifier):
    """A FAKE queued classifier (classified elsewhere, as Silero's batches are): the energy
    fake's answers, except that frames from `hold_from_ms` on wait until `release` is set."""

    frame_ms = 20
    sample_rate_hz = 16_000

    def __init__(self, hold_from_ms: int, release: asyncio.Event) -> None:
        self._energy = EnergyClassifier()
        self._hold_from_ms = hold_from_ms
        self._release = release
        self._at_ms = 0

    async def classify(self, frame: PcmFrame) -> float:
        start_ms, self._at_ms = self._at_ms, self._at_ms + self.frame_ms
        if start_ms >= self._hold_from_ms:
            await self._release.wait()
        return self._energy.speech_probability(frame)

    def speech_probability(self, frame: PcmFrame) -> float:
        return self._energy.speech_probability(frame)


class HeldEnergyVad:
    def __init__(self, hold_from_ms: int) -> None:
        self.hold_from_ms = hold_from_ms
        self.release = asyncio.Event()

    def open(self, threshold: float) -> HeldEnergyClassifier:
        return HeldEnergyClassifier(self.hold_from_ms, self.release)


async def test_the_turn_ends_without_waiting_for_the_vad_on_audio_too_short_to_change_it() -> None:
    """The append [1040, 1080) completes the silence (speech ends at 800, 250 ms of silence):
    the turn ends on its arrival though the VAD never answers for its frames, since 40 ms of
    audio cannot hold an onset (60 ms). A slow classifier (another process) costs the reply
    nothing."""
    vad = HeldEnergyVad(hold_from_ms=1040)
    model = CascadeModel(FakeAsr(["hello"]), FakeLlm(["Hi there."]), FakeTts())
    app = create_app(
        Settings.model_validate({"silence_duration_ms": 250, **FAKE_AUDIO_SETTINGS}), model=model, vad=vad
    )
    async with running_server(app) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        await client.stream(PcmFrame.silence(200, 24_000))
        await client.stream(tone(600))
        await client.stream(PcmFrame.silence(200, 24_000))
        # 40 ms appends: the one that completes the silence also completes the held frame
        await client.stream(PcmFrame.silence(120, 24_000), chunk_ms=40)
        stopped = await client.wait_for("input_audio_buffer.speech_stopped")
        assert stopped["audio_end_ms"] == 800
        await client.wait_for("response.output_audio.delta")
        vad.release.set()
        done = await client.wait_for("response.done")
        assert done["response"]["status"] == "completed"


class FlakyEnergyClassifier(HeldEnergyClassifier):
    """A FAKE queued classifier whose answer for the frame at `lost_at_ms` is lost, as when
    the VAD worker process dies with it (a retryable BackendError)."""

    def __init__(self, lost_at_ms: int) -> None:
        super().__init__(hold_from_ms=10**9, release=asyncio.Event())
        self._lost_at_ms = lost_at_ms

    async def classify(self, frame: PcmFrame) -> float:
        if self._at_ms == self._lost_at_ms:
            self._at_ms += self.frame_ms
            raise BackendError("the voice activity worker exited", retryable=True)
        return await super().classify(frame)


class FlakyEnergyVad:
    def open(self, threshold: float) -> FlakyEnergyClassifier:
        return FlakyEnergyClassifier(lost_at_ms=500)  # in the middle of the speech


async def test_a_vad_frame_lost_with_its_worker_counts_as_silence_and_the_call_goes_on() -> None:
    model = CascadeModel(FakeAsr(["hello"]), FakeLlm(["Hi there."]), FakeTts())
    app = create_app(Settings(), model=model, vad=FlakyEnergyVad())
    async with running_server(app) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        await client.speak_tone_turn()  # one 20 ms frame of silence inside the speech: one turn
        done = await client.wait_for("response.done")
        assert done["response"]["status"] == "completed"
        assert len(client.of_type("input_audio_buffer.speech_started")) == 1
        assert client.of_type("error") == []


async def test_a_replayed_assistant_message_joins_the_history_the_model_sees() -> None:
    llm = FakeLlm(["Noted."])
    async with running_server(fake_app(llm=llm)) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        said = {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hi, Ann here."}],
        }
        await client.send({"type": "conversation.item.create", "item": said})
        added = await client.wait_for("conversation.item.added")
        assert added["item"]["role"] == "assistant"
        assert added["item"]["content"][0]["text"] == "Hi, Ann here."
        await client.say("who are you?")
        await client.wait_for("response.done")
        assert [(m.role, m.text) for m in llm.calls[0]] == [
            ("assistant", "Hi, Ann here."),
            ("user", "who are you?"),
        ]
        empty = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": ""}]}
        await client.send({"type": "conversation.item.create", "item": empty})
        error = await client.wait_for("error")
        assert error["error"]["code"] == "missing_field"
