"""Out-of-band responses: a client's `response.create` with `conversation: "none"`.

"Summarise this call", "classify the intent": answered by the model beside the conversation,
to the conversation so far or to the response's own `input`, without adding anything to the
history and without cancelling, pausing or waiting for the caller's reply (its audio keeps
playing). Each runs as a task of the session's task group (ended with the session); at most
MAX_RUNNING at once. They are text only here: one audio channel cannot carry two replies, so
an out-of-band response asking for audio is refused with an `error` naming the field.
`response.cancel` with its id cancels one.

Events: `response.created` (`conversation_id: null`, its `metadata`), `response.output_item.added`,
text deltas, and `response.done`; no `conversation.item.added`, since no item joins the
conversation. A model failure ends it `failed` with the error in `status_details`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from server.aio import cancel_and_wait
from server.errors import BackendError, ProtocolViolation
from server.ids import new_id
from server.model.base import AnswersOutOfBand, OmniSession
from server.streaming.commands import CreateResponse
from server.streaming.outputs import Output, ResponseEnded, ResponseStarted, ResponseText
from server.streaming.session_config import SessionConfig

log = logging.getLogger(__name__)

MAX_RUNNING = 4
CANCEL_TIMEOUT_S = 1.0


class OutOfBandResponses:
    """The out-of-band responses of one conversation."""

    def __init__(
        self, send: Callable[[Output], Awaitable[None]], failure_code: Callable[[Exception], str]
    ) -> None:
        self._send = send
        self._failure_code = failure_code
        self._running: dict[str, asyncio.Task[None]] = {}
        self._cancelled_by_client: set[str] = set()

    def start(
        self, command: CreateResponse, session: OmniSession, config: SessionConfig, tasks: asyncio.TaskGroup
    ) -> str:
        """Start answering `command` (out_of_band) in a task; its response id. Raises
        ProtocolViolation for what cannot be answered."""
        options = command.options
        assert options is not None and command.out_of_band
        if not isinstance(session, AnswersOutOfBand):
            raise ProtocolViolation(
                f"the model {config.model!r} cannot answer out of band; use conversation 'auto'",
                code="unsupported_parameter",
                param="response.conversation",
            )
        if options.with_audio:
            raise ProtocolViolation(
                "out-of-band responses are text only here: set output_modalities to ['text']",
                code="unsupported_parameter",
                param="response.output_modalities",
            )
        if len(self._running) >= MAX_RUNNING:
            raise ProtocolViolation(
                f"{MAX_RUNNING} out-of-band responses are in progress; wait for one to finish",
                code="too_many_responses",
                param="response.conversation",
            )
        response_id = new_id("resp")
        self._running[response_id] = tasks.create_task(
            self._answer(response_id, command, session, config), name=f"out-of-band-{response_id}"
        )
        return response_id

    def is_running(self, response_id: str | None) -> bool:
        return response_id is not None and response_id in self._running

    async def cancel(self, response_id: str) -> None:
        """A client's `response.cancel` of an out-of-band response: it ends `cancelled`."""
        self._cancelled_by_client.add(response_id)
        await cancel_and_wait(self._running.get(response_id), timeout_s=CANCEL_TIMEOUT_S)

    async def _answer(
        self, response_id: str, command: CreateResponse, session: AnswersOutOfBand, config: SessionConfig
    ) -> None:
        assert command.options is not None
        item_id = new_id("item")
        metadata = command.metadata
        text: list[str] = []
        status, reason, error = "completed", None, None
        await self._send(
            ResponseStarted(response_id, item_id, False, None, config, metadata, out_of_band=True)
        )
        try:
            async for piece in session.respond_out_of_band(command.options, command.context):
                text.append(piece)
                await self._send(ResponseText(response_id, item_id, False, piece))
        except asyncio.CancelledError:
            if response_id not in self._cancelled_by_client:
                raise  # the session is ending: nothing more to send
            status, reason = "cancelled", "client_cancelled"
        except BackendError as exc:
            log.warning("out-of-band response failed", extra={"response_id": response_id, "error": str(exc)})
            status = "failed"
            error = {"type": "server_error", "code": self._failure_code(exc), "message": str(exc)}
        finally:
            self._running.pop(response_id, None)
            self._cancelled_by_client.discard(response_id)
        ended = ResponseEnded(
            response_id,
            item_id,
            False,
            "".join(text),
            status,
            config,
            reason=reason,
            error=error,
            metadata=metadata,
            out_of_band=True,
        )
        await self._send(ended)
