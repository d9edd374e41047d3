"""The benchmark's microphone: fixed frames at real time, on an absolute schedule.

`Microphone.run()` sends one `input_audio_buffer.append` (pcm16, 24 kHz, base64) per frame,
frame k at start + (k + 1) * frame_ms on the monotonic clock, the moment a live microphone
would have captured it; it never stops, sending digital silence when nothing is queued.
`say()` queues an utterance; its `Speech` records when the frames holding the first voiced
sample, the last voiced sample and the clip's end were sent. Those send times are the origins
of every latency the benchmark reports. `sent_s_at()` tells when the frame that completed a
given amount of input audio went out (the server's stream time, e.g. its end-of-turn deadline).

With a `background` (a `loadtests.room.Room`: the echo of the reply, room noise), every frame
is the queued speech plus `background.pull(capture_start_s, samples)`, clipped to int16, where
frame k's capture starts at start + k * frame_ms; the landmarks still come from the utterance
alone.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from websockets.exceptions import ConnectionClosed

from loadtests.corpus import SAMPLE_RATE_HZ, Utterance

SENT_HISTORY_FRAMES = 3000  # send times kept for `sent_s_at`: 60 s of 20 ms frames


class Background(Protocol):
    def pull(self, start_s: float, n: int) -> NDArray[np.float64]:
        """The `n` samples (int16 units, float) heard from `start_s` besides the caller's speech."""
        ...


@dataclass(slots=True, eq=False)
class Speech:
    """An utterance queued on the microphone, and when its landmarks were sent (monotonic s)."""

    utterance: Utterance
    voiced_sent_s: float | None = None  # the frame holding the first voiced sample
    end_sent_s: float | None = None  # the frame holding the last voiced sample
    done_sent_s: float | None = None  # the clip's last frame
    next_frame: int = 0


class Microphone:
    """Streams fixed frames at real time on an absolute schedule: queued speech, else silence.

    `run()` sends until cancelled; `say()` queues an utterance and returns its `Speech`, whose
    send times fill in as its frames go out. If the event loop falls behind, frames go out
    back to back until the schedule is met again (as a capture buffer would release them);
    `late_frames` counts those sent more than a frame late.
    """

    def __init__(
        self,
        send: Callable[[str], Awaitable[None]],
        frame_ms: int = 20,
        clock: Callable[[], float] = time.monotonic,
        history_frames: int = SENT_HISTORY_FRAMES,
        background: Background | None = None,
    ) -> None:
        self._send = send
        self._clock = clock
        self.frame_ms = frame_ms
        self._frame_samples = SAMPLE_RATE_HZ * frame_ms // 1000
        self._silence = _append_event(np.zeros(self._frame_samples, dtype=np.int16))
        self._background = background
        self._queue: deque[Speech] = deque()
        self.frames_sent = 0
        self.late_frames = 0
        self.max_lateness_s = 0.0
        self._sent_s: deque[float] = deque(maxlen=history_frames)

    def say(self, utterance: Utterance) -> Speech:
        speech = Speech(utterance)
        self._queue.append(speech)
        return speech

    @property
    def is_silent(self) -> bool:
        return not self._queue

    def sent_s_at(self, stream_ms: float) -> float | None:
        """When the frame that brought the input stream to `stream_ms` was sent (monotonic s).

        Stream time counts the audio sent since `run()` began, as a server counts the audio
        appended to its input buffer (`audio_end_ms` of `speech_stopped`); the frame holding
        [stream_ms - frame_ms, stream_ms) completes it. None if that frame has not been sent
        yet or is older than the kept history.
        """
        index = max(0, math.ceil(stream_ms / self.frame_ms) - 1)
        first = self.frames_sent - len(self._sent_s)
        if index < first or index >= self.frames_sent:
            return None
        return self._sent_s[index - first]

    async def run(self) -> None:
        frame_s = self.frame_ms / 1000
        start = self._clock()
        k = 0
        while True:
            due = start + (k + 1) * frame_s
            delay = due - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                self.max_lateness_s = max(self.max_lateness_s, -delay)
                if -delay > frame_s:
                    self.late_frames += 1
            payload, speech, landmarks = self._next_frame(start + k * frame_s)
            try:
                await self._send(payload)
            except ConnectionClosed:
                return  # the reader reports the close
            sent = self._clock()
            self._sent_s.append(sent)
            self.frames_sent += 1
            k += 1
            if speech is not None:
                for landmark in landmarks:
                    setattr(speech, landmark, sent)

    def _next_frame(self, capture_start_s: float) -> tuple[str, Speech | None, list[str]]:
        payload, speech, landmarks = self._next_speech()
        if self._background is None:
            return _append_event(payload) if payload is not None else self._silence, speech, landmarks
        mixed = self._background.pull(capture_start_s, self._frame_samples)
        if payload is not None:
            mixed = mixed + payload
        return _append_event(np.clip(np.round(mixed), -32768, 32767).astype(np.int16)), speech, landmarks

    def _next_speech(self) -> tuple[NDArray[np.int16] | None, Speech | None, list[str]]:
        if not self._queue:
            return None, None, []
        speech = self._queue[0]
        n = self._frame_samples
        utterance = speech.utterance
        index = speech.next_frame
        speech.next_frame += 1
        chunk = utterance.samples[index * n : (index + 1) * n]
        if len(chunk) < n:
            chunk = np.concatenate((chunk, np.zeros(n - len(chunk), dtype=np.int16)))
        first_voiced = utterance.speech_start_ms * SAMPLE_RATE_HZ // 1000 // n
        last_voiced = max(utterance.speech_end_ms * SAMPLE_RATE_HZ // 1000 - 1, 0) // n
        last = max(-(-len(utterance.samples) // n) - 1, 0)
        landmarks = []
        if index == first_voiced:
            landmarks.append("voiced_sent_s")
        if index == last_voiced:
            landmarks.append("end_sent_s")
        if index >= last:
            landmarks.append("done_sent_s")
            self._queue.popleft()
        return chunk, speech, landmarks


def _append_event(samples: np.ndarray[Any, np.dtype[np.int16]]) -> str:
    audio = base64.b64encode(samples.astype("<i2").tobytes()).decode("ascii")
    return json.dumps({"type": "input_audio_buffer.append", "audio": audio})
