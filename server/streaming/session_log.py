"""SessionLog: the structured log lines of one conversation, built from its AgentEvents.

The EventNotifier feeds it every event it publishes (redacted first when the session redacts
transcripts), so the logs tell the same story embedding code hears, held speculative turns and
all. Lines, each with `session_id`:
- `session started` (metadata keys, not values), `session ended` (turns);
- `user turn` (item_id, transcript_chars; the transcript only with `log_transcripts`);
- `turn`, one per response: turn_id (1, 2, ... in the session), item_id, user_item_id, status,
  interrupted, heard_ms, reply_chars and the latencies voice_to_voice_ms, asr_final_ms,
  llm_first_token_ms, tts_first_audio_ms (null when unknown, e.g. a text turn); the reply text
  only with `log_transcripts`.
"""

from __future__ import annotations

import logging
from typing import Any

from server.events import (
    AgentEvent,
    AssistantTurn,
    Interrupted,
    SessionEnded,
    SessionStarted,
    Truncated,
    TurnLatency,
    UserTurn,
)
from server.privacy import PrivacyOptions

log = logging.getLogger(__name__)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class SessionLog:
    """Call `record(event)` for each event of one session, in order; it never raises."""

    def __init__(self, privacy: PrivacyOptions, logger: logging.Logger = log) -> None:
        self._privacy = privacy
        self._log = logger
        self._turns = 0
        self._user_item_id: str | None = None
        self._latency: dict[str, TurnLatency] = {}
        self._heard_ms: dict[str, int] = {}

    def record(self, event: AgentEvent) -> None:
        match event:
            case SessionStarted():
                self._log.info(
                    "session started",
                    extra={"session_id": event.session_id, "metadata_keys": sorted(event.metadata)},
                )
            case UserTurn():
                self._user_item_id = event.item_id
                fields: dict[str, Any] = {
                    "session_id": event.session_id,
                    "item_id": event.item_id,
                    "transcript_chars": len(event.transcript),
                }
                if self._privacy.log_transcripts:
                    fields["transcript"] = event.transcript
                self._log.info("user turn", extra=fields)
            case TurnLatency():
                self._latency[event.item_id] = event
            case Interrupted():
                self._heard_ms[event.item_id] = event.heard_ms
            case Truncated():
                cut: dict[str, Any] = {
                    "session_id": event.session_id,
                    "item_id": event.item_id,
                    "heard_ms": event.heard_ms,
                    "source": event.source,
                }
                if self._privacy.log_transcripts:
                    cut["text"] = event.text
                self._log.info("truncated", extra=cut)
            case AssistantTurn():
                self._log.info("turn", extra=self._turn_fields(event))
            case SessionEnded():
                self._log.info("session ended", extra={"session_id": event.session_id, "turns": self._turns})

    def _turn_fields(self, event: AssistantTurn) -> dict[str, Any]:
        self._turns += 1
        latency = self._latency.pop(event.item_id, None)
        fields: dict[str, Any] = {
            "session_id": event.session_id,
            "turn_id": self._turns,
            "item_id": event.item_id,
            "user_item_id": self._user_item_id,
            "status": event.status,
            "interrupted": event.interrupted,
            "heard_ms": self._heard_ms.pop(event.item_id, None),
            "reply_chars": len(event.text),
            "voice_to_voice_ms": None if latency is None else _ms(latency.voice_to_voice_ms),
            "asr_final_ms": None if latency is None else _ms(latency.asr_final_ms),
            "llm_first_token_ms": None if latency is None else _ms(latency.llm_first_token_ms),
            "tts_first_audio_ms": None if latency is None else _ms(latency.tts_first_audio_ms),
        }
        if self._privacy.log_transcripts:
            fields["text"] = event.text
        return fields
