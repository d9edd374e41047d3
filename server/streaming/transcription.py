"""The transcript of a committed turn, from the model session's recogniser to the client.

`transcribe_turn` runs once per committed turn, in its own task (a prepared reply runs it
first thing). Transcripts join the history in turn order: it waits for the previous turn's
transcription first. Deltas reach the client as increments of the running hypothesis; a
revised hypothesis waits for the final transcript.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from server.events import AgentEvent, UserTurn
from server.logs import error_fields
from server.metrics import Metrics
from server.model.base import OmniSession
from server.privacy import PrivacyOptions
from server.streaming.outputs import Output, TranscriptCompleted, TranscriptDelta, TranscriptFailed
from server.streaming.replies import failure_code

log = logging.getLogger(__name__)


async def transcribe_turn(
    session: OmniSession,
    item_id: str,
    previous: asyncio.Task[Exception | None] | None,
    emit: Callable[[Output], Awaitable[None]],
    publish: Callable[[AgentEvent], None],
    *,
    session_id: str,
    announce_final: bool,
    metrics: Metrics,
    privacy: PrivacyOptions,
) -> Exception | None:
    """Transcribe the committed turn; returns None, or the recogniser's failure (reported
    here as TranscriptFailed; the turn then has no transcript). `announce_final`: send the
    final transcript (the session asked for input transcription)."""
    if previous is not None:
        await asyncio.shield(previous)  # transcripts join the history in turn order
    final = ""
    sent = ""  # deltas are increments: a revised hypothesis waits for the final transcript
    try:
        async for delta in session.commit_audio():
            if delta.is_final:
                final = delta.text
                continue
            if not delta.text.startswith(sent) or len(delta.text) == len(sent):
                continue
            increment, sent = delta.text[len(sent) :], delta.text
            await emit(TranscriptDelta(item_id, increment))
    except Exception as exc:  # the recogniser failed or hung: this turn fails, the session lives
        log.error(
            "transcription failed",
            extra={
                "session_id": session_id,
                "item_id": item_id,
                **error_fields(exc, with_message=privacy.log_transcripts),
            },
        )
        code = failure_code(exc)
        metrics.errors.labels(code=code).inc()
        error = {"type": "server_error", "code": code, "message": str(exc) or type(exc).__name__}
        await emit(TranscriptFailed(item_id, error))
        return exc
    if session.timings.asr_final_ms is not None:
        metrics.asr_final.observe(session.timings.asr_final_ms / 1000)
    if announce_final:
        await emit(TranscriptCompleted(item_id, final))
    publish(UserTurn(session_id, item_id, final))
    return None
