"""Per-session setup from the embedding backend: what a websocket upgrade looked like
(`SessionRequest`) and the settings the backend chose for it (`SessionSetup`).

The routes build a SessionRequest for every session and await the hook (if one was given)
before the session starts; `server.agent` and `server` re-export these types for embedding code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from server.knowledge.knowledge import Knowledge
from server.streaming.session_config import MAX_GREETING_CHARS


@dataclass(frozen=True, slots=True)
class SessionRequest:
    """The websocket upgrade a session starts from. `parameters`: a Twilio call's
    `<Parameter>`s (customParameters) with its `call_sid`; empty on /v1/realtime."""

    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    client_host: str | None
    parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SessionSetup:
    """Per-session settings from the embedding backend; None leaves the server default.
    A client's own session.update can still change instructions and voice later.

    knowledge: this session's operator knowledge instead of the server's (VOXGATE_KNOWLEDGE):
    a `Knowledge` (`server.knowledge.knowledge.parse_knowledge`, `load_knowledge_file` or
    `knowledge_from_items`, which raise KnowledgeFileError naming the line) or the path of a
    knowledge file. Indexed on first use and kept for later sessions that give the same one.

    turns_detected_by: who ends the caller's turns in a session of the `realtime` profile:
    "gateway" (Voxgate's VAD) or "upstream" (the upstream model's VAD, with the client's
    turn_detection settings); None: the profile's `turn_detection` option. The other profiles'
    models have no VAD: Voxgate's always ends their turns.

    greeting: the session's first reply, spoken as it is before the caller says anything
    ("" for none); None: the call's `greeting` <Parameter>, else the server's (VOXGATE_GREETING).
    At most MAX_GREETING_CHARS (else ValueError, here)."""

    instructions: str | None = None
    voice: str | None = None
    profile: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    knowledge: Knowledge | Path | None = None
    turns_detected_by: Literal["gateway", "upstream"] | None = None
    greeting: str | None = None

    def __post_init__(self) -> None:
        if self.greeting is not None and len(self.greeting) > MAX_GREETING_CHARS:
            raise ValueError(
                f"SessionSetup.greeting holds {len(self.greeting)} characters; at most {MAX_GREETING_CHARS}"
            )


SessionSetupHook = Callable[[SessionRequest], Awaitable[SessionSetup]]
