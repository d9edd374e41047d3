"""Twilio call parameters left by a voice webhook for the call's media stream.

A customer's voice webhook knows the caller (the CallSid, their account, the tier, a long
prompt) before it answers Twilio with `<Connect><Stream>`. TwiML `<Parameter>`s carry only a
few short strings, and behind a load balancer the stream may reach any replica. So the webhook
stores the call's parameters here (`PUT /v1/twilio/calls/{call_sid}` with an API key, or
`await agent.set_call_parameters(...)`) and the replica that takes the stream reads them at
its `start`: in memory for one process, in Redis (`VOXGATE_REDIS_URL`) for many. The stream's
own `customParameters` win where both name one.

`check_call_parameters` validates a request; the stores only keep and expire what they get.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Protocol

from server.errors import ProtocolViolation
from server.telephony.twilio_wire import check_greeting

MIN_CALL_TTL_S = 10
MAX_CALL_TTL_S = 24 * 3600
DEFAULT_CALL_TTL_S = 600
MAX_PARAMETERS = 64
MAX_PARAMETERS_BYTES = 64 * 1024  # names and values together (instructions can be long)
MAX_LOCAL_CALLS = 10_000
_CALL_SID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_call_sid(call_sid: str) -> str:
    if not _CALL_SID.match(call_sid):
        raise ProtocolViolation(
            "call_sid must be 1-64 letters, digits, '_' or '-' (Twilio's CallSid: CA + 32 hex)",
            code="invalid_value",
            param="call_sid",
        )
    return call_sid


def check_call_parameters(body: object) -> tuple[dict[str, str], int]:
    """(parameters, ttl_s) from `{"parameters": {name: string}, "ttl_s": 10..86400}`
    (ttl_s optional). Raises ProtocolViolation naming the bad field."""
    if not isinstance(body, dict):
        raise ProtocolViolation("the request body must be a JSON object", code="invalid_request")
    unknown = sorted(set(body) - {"parameters", "ttl_s"})
    if unknown:
        raise ProtocolViolation(f"unknown field {unknown[0]!r}", code="unknown_parameter", param=unknown[0])
    parameters = body.get("parameters")
    if not isinstance(parameters, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in parameters.items()
    ):
        raise ProtocolViolation(
            "parameters must be an object of strings", code="invalid_value", param="parameters"
        )
    if len(parameters) > MAX_PARAMETERS:
        raise ProtocolViolation(
            f"at most {MAX_PARAMETERS} parameters", code="invalid_value", param="parameters"
        )
    size = sum(len(k.encode()) + len(v.encode()) for k, v in parameters.items())
    if size > MAX_PARAMETERS_BYTES:
        raise ProtocolViolation(
            f"parameters hold {size} bytes; at most {MAX_PARAMETERS_BYTES}",
            code="invalid_value",
            param="parameters",
        )
    check_greeting(parameters, "parameters.greeting")
    ttl_s = body.get("ttl_s", DEFAULT_CALL_TTL_S)
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not MIN_CALL_TTL_S <= ttl_s <= MAX_CALL_TTL_S:
        raise ProtocolViolation(
            f"ttl_s must be an integer within [{MIN_CALL_TTL_S}, {MAX_CALL_TTL_S}]",
            code="invalid_value",
            param="ttl_s",
        )
    return dict(parameters), ttl_s


class CallParameters(Protocol):
    """Where call parameters wait for their stream. The Redis one may raise
    SharedStateUnavailable."""

    async def put(self, call_sid: str, parameters: Mapping[str, str], ttl_s: int, now_s: float) -> None: ...

    async def get(self, call_sid: str, now_s: float) -> dict[str, str] | None: ...


class LocalCallParameters:
    """In this process's memory: at most `max_calls`, the oldest dropped first. Nothing
    awaits (coroutines only to fit `CallParameters`)."""

    def __init__(self, max_calls: int = MAX_LOCAL_CALLS) -> None:
        self._max_calls = max_calls
        self._calls: OrderedDict[str, tuple[float, dict[str, str]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._calls)

    async def put(self, call_sid: str, parameters: Mapping[str, str], ttl_s: int, now_s: float) -> None:
        self._calls.pop(call_sid, None)
        self._calls[call_sid] = (now_s + ttl_s, dict(parameters))
        while len(self._calls) > self._max_calls:
            self._calls.popitem(last=False)

    async def get(self, call_sid: str, now_s: float) -> dict[str, str] | None:
        held = self._calls.get(call_sid)
        if held is None:
            return None
        expires_at_s, parameters = held
        if now_s >= expires_at_s:
            del self._calls[call_sid]
            return None
        return dict(parameters)


class CallRecords(Protocol):
    """Storage for `RedisCallParameters` (server/shared/redis_state.RedisState)."""

    async def store_call(self, call_sid: str, parameters: Mapping[str, str], ttl_s: int) -> None: ...

    async def load_call(self, call_sid: str) -> dict[str, str] | None: ...


class RedisCallParameters:
    """In Redis, for every replica; Redis expires them."""

    def __init__(self, records: CallRecords) -> None:
        self._records = records

    async def put(self, call_sid: str, parameters: Mapping[str, str], ttl_s: int, now_s: float) -> None:
        await self._records.store_call(call_sid, parameters, ttl_s)

    async def get(self, call_sid: str, now_s: float) -> dict[str, str] | None:
        return await self._records.load_call(call_sid)
