"""`PUT /v1/twilio/calls/{call_sid}`: a voice webhook leaves a call's parameters for its media
stream, on whichever replica the stream reaches (server/telephony/call_parameters.py).

    PUT /v1/twilio/calls/CA0123...      Authorization: Bearer <API key>
    {"parameters": {"instructions": "...", "voice": "...", "account": "42"}, "ttl_s": 600}
    -> 200 {"call_sid": "CA0123...", "expires_at": <Unix s>, "parameters": 3}

Bad bodies get 400 `{"error": {...}}` naming the field; Redis unreachable, 503.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from server.errors import ProtocolViolation, SharedStateUnavailable
from server.http.client_secrets import error_response, json_body, require_api_key
from server.telephony.call_parameters import CallParameters, check_call_parameters, check_call_sid

router = APIRouter()

MAX_CALL_BODY_BYTES = 128 * 1024


@router.put("/v1/twilio/calls/{call_sid}")
async def put_call_parameters(request: Request, call_sid: str) -> JSONResponse:
    refusal = require_api_key(request)
    if refusal is not None:
        return refusal
    body = await json_body(request, MAX_CALL_BODY_BYTES)
    if isinstance(body, JSONResponse):
        return body
    try:
        check_call_sid(call_sid)
        parameters, ttl_s = check_call_parameters(body)
    except ProtocolViolation as exc:
        return error_response(400, str(exc), code=exc.code, param=exc.param)
    calls: CallParameters = request.app.state.calls
    now_s = time.time()
    try:
        await calls.put(call_sid, parameters, ttl_s, now_s)
    except SharedStateUnavailable:
        request.app.state.runtime.metrics.shared_state_failures.labels(operation="call_parameters").inc()
        return error_response(
            503,
            "call parameters cannot be stored now (shared state unavailable); try again",
            code="shared_state_unavailable",
        )
    return JSONResponse(
        {"call_sid": call_sid, "expires_at": int(now_s) + ttl_s, "parameters": len(parameters)}
    )
