"""The server's grounding (server/knowledge): built from settings at startup, and per
session from `SessionSetup.knowledge`.

Order of calls:

    service = KnowledgeService.from_settings(settings, checks_replies=...)  # blocking: loads
                                          # and indexes VOXGATE_KNOWLEDGE; KnowledgeFileError
    grounding = await service.for_session(setup.knowledge)   # per session; None: ungrounded

The sentence encoder is loaded once, on the first knowledge to index. Indexes of per-session
knowledge are kept (a few, least recently used) so sessions that give the same knowledge
object, or the same unchanged file, share one.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from pathlib import Path

from server.knowledge.embedding import MiniLmEncoder, SentenceEncoder
from server.knowledge.grounding import Grounding
from server.knowledge.knowledge import Knowledge, load_knowledge_file
from server.knowledge.retrieval import KnowledgeIndex, MatchThresholds
from server.settings import Settings

_SESSION_INDEXES = 8


class KnowledgeService:
    def __init__(
        self,
        thresholds: MatchThresholds,
        *,
        checks_replies: bool,
        knowledge: Knowledge | None = None,
        encoder: SentenceEncoder | None = None,
    ) -> None:
        """`checks_replies`: the specifics and role checks apply to the model's replies (the
        server's own language models; not a brain). `knowledge`: the server's default.
        `encoder`: the sentence encoder (default: MiniLM, loaded on first use)."""
        self.thresholds = thresholds
        self.checks_replies = checks_replies
        self._encoder: SentenceEncoder | None = encoder
        self._lock = threading.Lock()
        self._indexes: OrderedDict[object, Grounding] = OrderedDict()
        self.default: Grounding | None = None
        if knowledge is not None:
            self.default = self._grounding(knowledge)
        elif checks_replies:
            self.default = Grounding(None)

    @classmethod
    def from_settings(cls, settings: Settings, *, checks_replies: bool) -> KnowledgeService:
        """Blocking: loads and indexes settings.knowledge. Raises KnowledgeFileError naming
        the file and line of a malformed one, BackendUnavailable without the encoder."""
        thresholds = MatchThresholds(
            answer_score=settings.knowledge_answer_score,
            hedge_score=settings.knowledge_hedge_score,
            hint_score=settings.knowledge_hint_score,
        )
        knowledge = None if settings.knowledge is None else load_knowledge_file(settings.knowledge)
        return cls(thresholds, checks_replies=checks_replies and settings.check_replies, knowledge=knowledge)

    async def for_session(self, knowledge: Knowledge | Path | None) -> Grounding | None:
        """The grounding of a session given `knowledge` (None: the server's default).
        Raises KnowledgeFileError for a bad file."""
        if knowledge is None:
            return self.default
        return await asyncio.to_thread(self._for, knowledge)

    def _for(self, knowledge: Knowledge | Path) -> Grounding:
        key: object = knowledge
        if isinstance(knowledge, Path):
            stat = knowledge.stat() if knowledge.exists() else None
            key = (
                str(knowledge.resolve()),
                stat.st_mtime_ns if stat else None,
                stat.st_size if stat else None,
            )
        with self._lock:
            cached = self._indexes.get(key)
            if cached is not None:
                self._indexes.move_to_end(key)
                return cached
        parsed = load_knowledge_file(knowledge) if isinstance(knowledge, Path) else knowledge
        grounding = self._grounding(parsed)
        with self._lock:
            self._indexes[key] = grounding
            while len(self._indexes) > _SESSION_INDEXES:
                self._indexes.popitem(last=False)
        return grounding

    def _grounding(self, knowledge: Knowledge) -> Grounding:
        with self._lock:
            if self._encoder is None:
                self._encoder = MiniLmEncoder.load()
            encoder = self._encoder
        index = KnowledgeIndex(knowledge, encoder, thresholds=self.thresholds)
        return Grounding(index, guard_specifics=self.checks_replies)
