"""Function calling on the OpenAI Realtime wire: the client's tools and the call/output items.

Client tools arrive in `session.update` as `{"type": "function", "name", "description",
"parameters"}` (the same flat shape in both dialects). When the model calls one, the response
carries a `function_call` item, announced in protocol order by `function_call_events`:

    response.output_item.added      item {type: function_call, status: in_progress, call_id, name}
    conversation.item.created       (beta) / conversation.item.added (GA)
    response.function_call_arguments.delta   {call_id, delta}
    response.function_call_arguments.done    {call_id, name, arguments}
    conversation.item.done          (GA only)
    response.output_item.done       item {status: completed, arguments}

and the item is listed in `response.done`'s output. The client answers with
`conversation.item.create` of a `function_call_output` item (`call_id`, `output`), then
`response.create`.

No asyncio, no sockets here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from server.errors import ProtocolViolation
from server.model.tool_calls import ToolSpec
from server.realtime.wire import EventWriter

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_CLIENT_TOOLS = 128


def client_tool_specs(tools: object, server_tool_names: Iterable[str] = ()) -> tuple[ToolSpec, ...]:
    """The functions a client declared in `session.tools`; raises ProtocolViolation (with the
    offending `param`) for anything the model could not be offered."""
    if not isinstance(tools, list):
        raise ProtocolViolation("session.tools must be a list", code="invalid_value", param="session.tools")
    if len(tools) > MAX_CLIENT_TOOLS:
        raise ProtocolViolation(
            f"session.tools lists more than {MAX_CLIENT_TOOLS} tools",
            code="invalid_value",
            param="session.tools",
        )
    reserved = set(server_tool_names)
    seen: set[str] = set()
    specs: list[ToolSpec] = []
    for i, tool in enumerate(tools):
        where = f"session.tools[{i}]"
        if not isinstance(tool, dict):
            raise ProtocolViolation(f"{where} must be an object", code="invalid_value", param=where)
        kind = tool.get("type", "function")
        if kind != "function":
            raise ProtocolViolation(
                f"{where}.type {kind!r} is not supported; use 'function'",
                code="invalid_value",
                param=f"{where}.type",
            )
        name = tool.get("name")
        if name is None:
            raise ProtocolViolation(f"{where} has no name", code="missing_field", param=f"{where}.name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ProtocolViolation(
                f"{where}.name must match {_NAME.pattern}", code="invalid_value", param=f"{where}.name"
            )
        if name in seen:
            raise ProtocolViolation(
                f"{where}.name {name!r} is declared twice", code="invalid_value", param=f"{where}.name"
            )
        if name in reserved:
            raise ProtocolViolation(
                f"{where}.name {name!r} is a tool of this server; pick another name",
                code="invalid_value",
                param=f"{where}.name",
            )
        seen.add(name)
        description = tool.get("description", "")
        if not isinstance(description, str):
            raise ProtocolViolation(
                f"{where}.description must be a string", code="invalid_value", param=f"{where}.description"
            )
        parameters = tool.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise ProtocolViolation(
                f"{where}.parameters must be a JSON schema object",
                code="invalid_value",
                param=f"{where}.parameters",
            )
        specs.append(ToolSpec(name, description, parameters, client_side=True))
    return tuple(specs)


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def function_call_output_item(item_id: str, call_id: str, output: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "function_call_output",
        "call_id": call_id,
        "output": output,
    }


def function_call_events(
    writer: EventWriter,
    response_id: str,
    item_id: str,
    output_index: int,
    call_id: str,
    name: str,
    arguments: str,
    previous_item_id: str | None,
) -> list[dict[str, Any]]:
    """A function_call item of a response, from added to done (module docstring)."""
    common: dict[str, Any] = {"response_id": response_id, "output_index": output_index}
    opened = function_call_item(item_id, call_id, name, "", "in_progress")
    done = function_call_item(item_id, call_id, name, arguments, "completed")
    events = [writer.event("response.output_item.added", item=opened, **common)]
    if writer.is_beta:
        events.append(
            writer.event("conversation.item.created", previous_item_id=previous_item_id, item=opened)
        )
    else:
        events.append(writer.event("conversation.item.added", previous_item_id=previous_item_id, item=opened))
    events += [
        writer.event(
            "response.function_call_arguments.delta",
            item_id=item_id,
            call_id=call_id,
            delta=arguments,
            **common,
        ),
        writer.event(
            "response.function_call_arguments.done",
            item_id=item_id,
            call_id=call_id,
            name=name,
            arguments=arguments,
            **common,
        ),
    ]
    if not writer.is_beta:
        events.append(writer.event("conversation.item.done", previous_item_id=previous_item_id, item=done))
    events.append(writer.event("response.output_item.done", item=done, **common))
    return events
