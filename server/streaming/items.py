"""Which history message each conversation item is, so a client can delete an item.

The conversation names the message an item became as it joins the history (`remember`, with
a test that finds it among the newest messages: a typed message, a transcribed turn, a reply,
a function call or its output); `delete` then removes exactly that object from the model's
history. Items whose message was never named (a reply that said nothing) cannot be deleted.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Final

from server.errors import ProtocolViolation
from server.model.base import ForgetsMessages, Message, OmniSession

MAX_ITEMS: Final = 10_000


class ItemMessages:
    def __init__(self, max_items: int = MAX_ITEMS) -> None:
        self._max_items = max_items
        self._messages: OrderedDict[str, Message] = OrderedDict()

    def __len__(self) -> int:
        return len(self._messages)

    def remember(self, item_id: str, history: Sequence[Message], is_it: Callable[[Message], bool]) -> None:
        """Name the newest message of `history` that `is_it` as item `item_id` (none: nothing)."""
        for message in reversed(history):
            if is_it(message):
                self._messages[item_id] = message
                while len(self._messages) > self._max_items:
                    self._messages.popitem(last=False)
                return

    def delete(self, item_id: str, session: OmniSession) -> None:
        """Remove the item's message from the session's history; ProtocolViolation if it
        cannot be."""
        message = self._messages.get(item_id)
        if message is None:
            raise ProtocolViolation(
                f"item {item_id!r} is not in this conversation (or cannot be deleted)",
                code="item_not_found",
                param="item_id",
            )
        if not isinstance(session, ForgetsMessages):
            raise ProtocolViolation(
                "this model's conversation cannot be edited", code="unsupported_event", param="type"
            )
        session.forget(message)
        del self._messages[item_id]
