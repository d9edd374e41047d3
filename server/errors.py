"""The exception hierarchy. Close codes are chosen only in routes.py."""

from __future__ import annotations


class VoiceServerError(Exception):
    """Base of every error Voxgate raises on purpose."""


class ProtocolViolation(VoiceServerError):
    """The client sent something the protocol does not allow.

    `code` is the `error.code` of the protocol `error` event; `param` names the offending field.
    """

    def __init__(self, message: str, *, code: str = "invalid_request", param: str | None = None):
        super().__init__(message)
        self.code = code
        self.param = param


class BackendError(VoiceServerError):
    """A model backend failed. `retryable` says whether the same call may succeed later."""

    def __init__(self, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


class ModelTimeout(BackendError):
    """A model call produced nothing for longer than its deadline (a hung backend).
    `stage` names the call ("speech-to-text", "language model", "text-to-speech")."""

    def __init__(self, stage: str, timeout_s: float):
        super().__init__(f"the {stage} produced nothing for {timeout_s:g} s", retryable=True)
        self.stage = stage
        self.timeout_s = timeout_s


class BackendUnavailable(BackendError):
    """A backend cannot be loaded or has no capacity (missing package or model file)."""


class TurnStateError(VoiceServerError):
    """The turn-taking state machine got an event it cannot be in: a bug, not bad input."""


class SharedStateUnavailable(VoiceServerError):
    """The shared state (Redis) did not answer in time or refused the command; each caller
    applies its documented fallback (docs/operations.md, "When Redis fails")."""
