"""The items of a realtime conversation as the client was last told of them, for
`conversation.item.retrieve`.

The adapter feeds every event it sends through `ItemLog.remember`: an item announced
(`conversation.item.added`/`.done`, beta `conversation.item.created`) or finished
(`response.output_item.done`) is kept by id, and a user turn's transcript joins its item when
it completes. `get` answers with a copy. Audio is not kept (a retrieved user audio item carries
its transcript, not its bytes). At most MAX_ITEMS are kept; the oldest go first.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Final

MAX_ITEMS: Final = 1000
_ITEM_EVENTS: Final = frozenset(
    {
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.created",
        "response.output_item.done",
    }
)


class ItemLog:
    def __init__(self, max_items: int = MAX_ITEMS) -> None:
        self._max_items = max_items
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.last_added_id: str | None = None  # the conversation's last item (its end)

    def __len__(self) -> int:
        return len(self._items)

    def remember(self, events: Iterable[dict[str, Any]]) -> None:
        for event in events:
            kind = event.get("type")
            if kind in _ITEM_EVENTS:
                item = event.get("item")
                if isinstance(item, dict) and isinstance(item.get("id"), str):
                    self._keep(item["id"], copy.deepcopy(item))
                    if kind in ("conversation.item.added", "conversation.item.created"):
                        self.last_added_id = item["id"]
            elif kind == "conversation.item.input_audio_transcription.completed":
                self._transcribed(event)
            elif kind == "conversation.item.deleted":
                self._items.pop(str(event.get("item_id")), None)
                if event.get("item_id") == self.last_added_id:
                    self.last_added_id = next(reversed(self._items), None)

    def get(self, item_id: str) -> dict[str, Any] | None:
        item = self._items.get(item_id)
        return None if item is None else copy.deepcopy(item)

    def _keep(self, item_id: str, item: dict[str, Any]) -> None:
        self._items.pop(item_id, None)
        self._items[item_id] = item
        while len(self._items) > self._max_items:
            self._items.popitem(last=False)

    def _transcribed(self, event: dict[str, Any]) -> None:
        item = self._items.get(str(event.get("item_id")))
        index = event.get("content_index", 0)
        content = item.get("content") if item is not None else None
        if isinstance(content, list) and isinstance(index, int) and 0 <= index < len(content):
            if isinstance(content[index], dict):
                content[index]["transcript"] = event.get("transcript")
