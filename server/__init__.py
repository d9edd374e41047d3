"""Voxgate: a real-time voice conversation server. The embedding API is re-exported here."""

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
