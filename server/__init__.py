"""Voxgate: a real-time voice conversation server. The embedding API is re-exported here.

The names load on first use (PEP 562), so the model worker processes, which run modules of
this package (`python -m server.model.llm_worker`), do not import FastAPI and the HTTP edge.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server.agent import BrainRequest, SessionRequest, SessionSetup, VoiceAgent
    from server.events import (
        AgentEvent,
        AssistantTurn,
        Interrupted,
        SessionEnded,
        SessionStarted,
        ToolCalled,
        Truncated,
        TurnLatency,
        UserTurn,
    )
    from server.http.access import ClientSecret, InvalidMintRequest
    from server.model.base import Message
    from server.model.tool_calls import ToolResult
    from server.settings import Settings
    from server.tools import Tool, ToolBox, tool

_HOMES = {
    "BrainRequest": "server.agent",
    "SessionRequest": "server.agent",
    "SessionSetup": "server.agent",
    "VoiceAgent": "server.agent",
    "AgentEvent": "server.events",
    "AssistantTurn": "server.events",
    "Interrupted": "server.events",
    "SessionEnded": "server.events",
    "SessionStarted": "server.events",
    "ToolCalled": "server.events",
    "Truncated": "server.events",
    "TurnLatency": "server.events",
    "UserTurn": "server.events",
    "ClientSecret": "server.http.access",
    "InvalidMintRequest": "server.http.access",
    "Message": "server.model.base",
    "ToolResult": "server.model.tool_calls",
    "Settings": "server.settings",
    "Tool": "server.tools",
    "ToolBox": "server.tools",
    "tool": "server.tools",
}

__all__ = [
    "AgentEvent",
    "AssistantTurn",
    "BrainRequest",
    "ClientSecret",
    "Interrupted",
    "InvalidMintRequest",
    "Message",
    "SessionEnded",
    "SessionRequest",
    "SessionSetup",
    "SessionStarted",
    "Settings",
    "Tool",
    "ToolBox",
    "ToolCalled",
    "ToolResult",
    "Truncated",
    "TurnLatency",
    "UserTurn",
    "VoiceAgent",
    "tool",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'server' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value
    return value
