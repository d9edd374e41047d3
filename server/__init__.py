"""Voxgate: a real-time voice conversation server. The embedding API is re-exported here."""

from server.access import ClientSecret, InvalidMintRequest
from server.agent import BrainRequest, SessionRequest, SessionSetup, VoiceAgent
from server.events import (
    AgentEvent,
    AssistantTurn,
    Interrupted,
    SessionEnded,
    SessionStarted,
    TurnLatency,
    UserTurn,
)
from server.model.base import Message
from server.settings import Settings

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
    "TurnLatency",
    "UserTurn",
    "VoiceAgent",
]
