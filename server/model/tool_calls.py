"""What a language model sees of tools: their specs going in, call requests coming out.

A tool-capable `LlmBackend` reads `SessionOptions.tools` (a `ToolRunner`, or None) for the
specs to offer, and yields a `ToolCallRequest` among its text pieces once a call's arguments are
complete. The cascade then asks the runner: a server-side tool runs there and then (its JSON
result goes back to the model), a client-side one is handed to the protocol client.

Invariants:
- `ToolSpec.parameters` is a JSON schema object (`{"type": "object", ...}`).
- `ToolCallRequest.arguments_json` is the model's raw text; nothing here parses or trusts it.
- `ToolRunner.call` never raises for bad arguments, unknown tools, failures or timeouts: it
  returns the JSON text the model should see (an `{"error": ...}` object in those cases).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol


@dataclass(frozen=True, slots=True)
class ForcedTool:
    """tool_choice naming one function: the model must call it."""

    name: str


ToolChoice = Literal["auto", "none", "required"] | ForcedTool


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """One function offered to the model. `client_side`: declared by the protocol client in
    session.update; the client runs it and sends back a function_call_output."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    client_side: bool = False


@dataclass(frozen=True, slots=True)
class ToolCallRequest:
    """The model asks for `name` with `arguments_json` (unvalidated text)."""

    call_id: str
    name: str
    arguments_json: str


@dataclass(frozen=True, slots=True)
class ToolResult:
    """One finished call. `output` is the JSON text the model is given; `value` the function's
    return value (None on error); `error` a short code (invalid_arguments, unknown_tool,
    timeout, tool_failed) or None; `arguments` the validated arguments (the raw input when
    they did not validate)."""

    name: str
    output: str
    value: Any = None
    error: str | None = None
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    duration_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


class ToolRunner(Protocol):
    """A session's tools, as the reply loop and brains use them. Order: `specs()` to offer
    them, `is_client_side(name)` to route a request, `call()` for server-side ones."""

    def specs(self) -> Sequence[ToolSpec]:
        """Every tool the model may call (server and client side); empty: offer none."""
        ...

    @property
    def choice(self) -> ToolChoice:
        """The protocol's tool_choice: "auto", "none", "required" or one named function."""
        ...

    def is_client_side(self, name: str) -> bool: ...

    async def call(
        self,
        name: str,
        arguments: str | Mapping[str, Any],
        say: Callable[[str], None] | None = None,
        call_id: str = "",
    ) -> ToolResult:
        """Run a server-side tool (arguments: the model's JSON text or a mapping). If it is
        slow and has a filler, `say(filler)` is called once, before the result is ready.
        Never raises but CancelledError; cancelling the caller cancels the tool."""
        ...
