"""Server-side tools: typed Python functions the language model (or a brain) can call.

    @agent.tool(timeout_s=5, filler="One moment, let me check that.")
    async def order_status(order_id: str) -> dict[str, str]:
        \"\"\"Look up where an order is.\"\"\"
        return {"order_id": order_id, "status": "shipped"}

A `Tool` is built from the function's signature: its name, its docstring as the description,
and a pydantic model of its parameters (or the function's single `BaseModel` parameter), whose
JSON schema the model is offered. `ToolBox` holds an agent's tools and runs a call:

- the arguments are validated first; bad JSON, unknown or missing or mistyped arguments give an
  `{"error": "invalid_arguments", ...}` result the model sees, never an exception;
- an async function runs on the loop, a sync one in a worker thread (so it never blocks audio);
- `timeout_s` bounds it: `{"error": "timeout", "message": "the lookup timed out ..."}`. A sync
  function's thread cannot be stopped and finishes in the background; its result is dropped;
- an exception in the tool is logged and becomes `{"error": "tool_failed", ...}`;
- the return value is serialised to JSON text (pydantic models, dataclasses, dicts, str, ...).

`SessionTools` binds a ToolBox to one session: it adds the protocol client's own tools (from
session.update), speaks a tool's `filler` when the call outlasts `filler_after_ms`, and
publishes a `ToolCalled` event per call. It is the `ToolRunner` the reply loop uses.
Cancelling a call (barge-in) cancels the tool's task.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
import time
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic_core
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from server.aio import cancel_and_wait
from server.events import AgentEvent, ToolCalled
from server.model.tool_calls import ToolChoice, ToolResult, ToolSpec

__all__ = ["Tool", "ToolBox", "ToolResult", "SessionTools", "run_with_filler", "tool"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_FILLER_AFTER_MS = 800
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what OpenAI-compatible APIs accept
_MAX_ERROR_DETAILS = 5


@dataclass(frozen=True, slots=True)
class Tool:
    """A typed function the model can call. Build with `Tool.from_function` or `@tool(...)`.

    timeout_s: longest run before the model is told the lookup timed out.
    filler: said to the caller when the call outlasts `filler_after_ms` (None: stay silent).
    """

    name: str
    description: str
    arguments_model: type[BaseModel]
    function: Callable[..., Any]
    takes_model: bool  # the function's single parameter is the arguments model itself
    timeout_s: float = DEFAULT_TIMEOUT_S
    filler: str | None = None
    filler_after_ms: int = DEFAULT_FILLER_AFTER_MS

    @classmethod
    def from_function(
        cls,
        function: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        filler: str | None = None,
        filler_after_ms: int = DEFAULT_FILLER_AFTER_MS,
    ) -> Tool:
        """Raises TypeError for a parameter without a type annotation, *args/**kwargs, or an
        annotation pydantic cannot validate; ValueError for a bad name or bounds."""
        tool_name = name or function.__name__
        if not _NAME.match(tool_name):
            raise ValueError(f"tool name {tool_name!r} must match {_NAME.pattern}")
        if timeout_s <= 0:
            raise ValueError(f"tool {tool_name}: timeout_s must be > 0")
        if filler_after_ms < 0:
            raise ValueError(f"tool {tool_name}: filler_after_ms must be >= 0")
        model, takes_model = _arguments_model(function, tool_name)
        return cls(
            name=tool_name,
            description=description if description is not None else inspect.getdoc(function) or "",
            arguments_model=model,
            function=function,
            takes_model=takes_model,
            timeout_s=timeout_s,
            filler=filler or None,
            filler_after_ms=filler_after_ms,
        )

    def spec(self) -> ToolSpec:
        """The function as offered to the model: name, description, JSON schema."""
        schema = self.arguments_model.model_json_schema()
        schema.pop("title", None)
        schema.setdefault("properties", {})
        return ToolSpec(self.name, self.description, schema)


def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    filler: str | None = None,
    filler_after_ms: int = DEFAULT_FILLER_AFTER_MS,
) -> Callable[[Callable[..., Any]], Tool]:
    """Decorator: `@tool(timeout_s=5)` turns a function into a `Tool` for `VoiceAgent(tools=[...])`."""

    def make(function: Callable[..., Any]) -> Tool:
        return Tool.from_function(
            function,
            name=name,
            description=description,
            timeout_s=timeout_s,
            filler=filler,
            filler_after_ms=filler_after_ms,
        )

    return make


def _arguments_model(function: Callable[..., Any], tool_name: str) -> tuple[type[BaseModel], bool]:
    signature = inspect.signature(function)
    try:
        hints = _parameter_hints(function)
    except NameError as exc:
        raise TypeError(f"tool {tool_name}: cannot resolve a type annotation: {exc}") from exc
    params = list(signature.parameters.values())
    if len(params) == 1:
        only = hints.get(params[0].name)
        if isinstance(only, type) and issubclass(only, BaseModel):
            return only, True
    fields: dict[str, Any] = {}
    for param in params:
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise TypeError(f"tool {tool_name}: *args and **kwargs cannot be offered to a model")
        if param.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise TypeError(f"tool {tool_name}: parameter {param.name} is positional-only")
        if param.name not in hints:
            raise TypeError(f"tool {tool_name}: parameter {param.name} needs a type annotation")
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (hints[param.name], default)
    try:
        model: type[BaseModel] = create_model(
            f"{tool_name}_arguments",
            __config__=ConfigDict(extra="forbid"),
            **fields,
        )
        model.model_json_schema()
    except (pydantic_core.SchemaError, TypeError, ValueError) as exc:
        raise TypeError(f"tool {tool_name}: its parameters cannot be described to a model: {exc}") from exc
    return model, False


def _parameter_hints(function: Callable[..., Any]) -> dict[str, Any]:
    """The parameters' annotations, resolved; the return annotation is never needed (and may
    name a class local to the caller)."""
    raw = {k: v for k, v in getattr(function, "__annotations__", {}).items() if k != "return"}
    holder = type("_Parameters", (), {"__annotations__": raw, "__module__": function.__module__})
    try:
        localns: dict[str, Any] = dict(inspect.getclosurevars(function).nonlocals)
    except TypeError:
        localns = {}
    return typing.get_type_hints(holder, localns=localns, include_extras=True)


def _error(code: str, message: str, **extra: Any) -> str:
    return json.dumps({"error": code, "message": message, **extra})


class ToolBox:
    """An agent's tools by name. `call()` validates, runs with a timeout and never raises
    (except CancelledError, which it propagates after stopping the tool)."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for t in tools:
            self.add(t)

    def add(self, tool: Tool) -> None:
        if tool.name in self._tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    def specs(self) -> tuple[ToolSpec, ...]:
        return tuple(t.spec() for t in self._tools.values())

    async def call(self, name: str, arguments: str | Mapping[str, Any]) -> ToolResult:
        """Run `name` with `arguments` (the model's JSON text, or a mapping from a brain)."""
        started = time.perf_counter()

        def result(output: str, **kw: Any) -> ToolResult:
            return ToolResult(name, output, duration_ms=(time.perf_counter() - started) * 1000, **kw)

        raw = arguments if isinstance(arguments, str) else dict(arguments)
        tool = self._tools.get(name)
        if tool is None:
            known = ", ".join(sorted(self._tools)) or "none"
            return result(
                _error("unknown_tool", f"there is no tool named {name!r}; tools: {known}"),
                error="unknown_tool",
                arguments=raw,
            )
        try:
            parsed = _parse_arguments(arguments)
            args = tool.arguments_model.model_validate(parsed)
        except (ValueError, ValidationError) as exc:
            details = _validation_details(exc)
            return result(
                _error("invalid_arguments", f"the arguments for {name} are not valid", details=details),
                error="invalid_arguments",
                arguments=raw,
            )
        validated = {k: getattr(args, k) for k in type(args).model_fields}
        shown = args.model_dump(mode="json")
        try:
            async with asyncio.timeout(tool.timeout_s):
                value = await self._invoke(tool, args, validated)
        except TimeoutError:
            log.warning("tool timed out", extra={"tool": name, "timeout_s": tool.timeout_s})
            return result(
                _error("timeout", f"the lookup timed out after {tool.timeout_s:g} s"),
                error="timeout",
                arguments=shown,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("tool failed", extra={"tool": name})
            return result(
                _error("tool_failed", f"{name} failed: {type(exc).__name__}: {exc}"),
                error="tool_failed",
                arguments=shown,
            )
        try:
            output = pydantic_core.to_json(value).decode()
        except pydantic_core.PydanticSerializationError as exc:
            log.error("tool returned a value that is not JSON-serialisable", extra={"tool": name})
            return result(
                _error("tool_failed", f"{name} returned a value that cannot be sent: {exc}"),
                error="tool_failed",
                arguments=shown,
            )
        return result(output, value=value, arguments=shown)

    async def _invoke(self, tool: Tool, args: BaseModel, validated: dict[str, Any]) -> Any:
        fn = tool.function
        if inspect.iscoroutinefunction(fn):
            if tool.takes_model:
                return await fn(args)
            return await fn(**validated)
        if tool.takes_model:
            return await asyncio.to_thread(fn, args)
        return await asyncio.to_thread(lambda: fn(**validated))


def _parse_arguments(arguments: str | Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(arguments, str):
        return arguments
    if not arguments.strip():
        return {}  # some models send "" for a function without parameters
    parsed = json.loads(arguments)  # ValueError on bad JSON
    if not isinstance(parsed, dict):
        raise ValueError("arguments must be a JSON object")
    return parsed


def _validation_details(exc: ValueError | ValidationError) -> list[dict[str, str]]:
    if isinstance(exc, ValidationError):
        return [
            {"field": ".".join(str(p) for p in e["loc"]) or "(arguments)", "problem": e["msg"]}
            for e in exc.errors()[:_MAX_ERROR_DETAILS]
        ]
    return [{"field": "(arguments)", "problem": str(exc)}]


async def run_with_filler(
    call: typing.Coroutine[Any, Any, ToolResult],
    filler: str | None,
    filler_after_ms: int,
    say: Callable[[str], None],
) -> ToolResult:
    """Await `call`; if it is still running after `filler_after_ms`, `say(filler)` once.
    The call runs as an owned task: cancelling this cancels it."""
    task = asyncio.ensure_future(call)
    try:
        if filler:
            done, _ = await asyncio.wait({task}, timeout=filler_after_ms / 1000)
            if not done:
                say(filler)
        return await task
    finally:
        await cancel_and_wait(task, timeout_s=1.0)


class SessionTools:
    """One session's tools: the agent's ToolBox plus the protocol client's functions.
    The `ToolRunner` of the reply loop and of brains (`BrainRequest.call_tool`)."""

    def __init__(
        self,
        box: ToolBox,
        session_id: str,
        publish: Callable[[AgentEvent], None],
        client_specs: Sequence[ToolSpec] = (),
        choice: ToolChoice = "auto",
        gate: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """`gate`: awaited before each server-side call; the conversation makes a speculative
        reply's calls wait there until the reply is adopted (an abandoned one never runs them)."""
        self._gate = gate
        self.box = box
        self.session_id = session_id
        self._publish = publish
        self._client = tuple(client_specs)
        self._choice = choice
        self._server_specs = box.specs()

    @property
    def choice(self) -> ToolChoice:
        return self._choice

    def specs(self) -> Sequence[ToolSpec]:
        return (*self._server_specs, *self._client)

    def is_client_side(self, name: str) -> bool:
        return name not in self.box and any(s.name == name for s in self._client)

    async def call(
        self,
        name: str,
        arguments: str | Mapping[str, Any],
        say: Callable[[str], None] | None = None,
        call_id: str = "",
    ) -> ToolResult:
        """Run a server-side tool, speaking its filler through `say` if it is slow, and
        publish a ToolCalled event."""
        if self._gate is not None:
            await self._gate()
        tool = self.box.get(name)
        filler = tool.filler if tool is not None and say is not None else None
        after_ms = tool.filler_after_ms if tool is not None else 0
        started = time.perf_counter()
        try:
            result = await run_with_filler(
                self.box.call(name, arguments), filler, after_ms, say or (lambda _: None)
            )
        except asyncio.CancelledError:
            # barge-in (or the session ending) cut the call short: the tool may have acted
            # already, so an audit log must still see that it was called
            self._publish(
                ToolCalled(
                    self.session_id,
                    call_id,
                    name,
                    arguments if isinstance(arguments, str) else dict(arguments),
                    "",
                    "cancelled",
                    (time.perf_counter() - started) * 1000,
                    client_side=False,
                )
            )
            raise
        self._publish(
            ToolCalled(
                self.session_id,
                call_id,
                name,
                result.arguments,
                result.output,
                result.error,
                result.duration_ms,
                client_side=False,
            )
        )
        return result
