"""The desk's tools, registered on a VoiceAgent as typed functions (`@agent.tool`).

The same three tools serve both brains: the offline dialogue manager calls them with
`request.call_tool(...)`; a tool-capable language model (VOXGATE_LLM=openai) is offered their
JSON schemas and calls them itself. Each is bounded by a timeout, and says a filler if the
database is slow to answer.
"""

from __future__ import annotations

from examples.customer_service.desk import SupportDesk
from examples.customer_service.results import OrderStatus, RefundOutcome, Transfer
from server import VoiceAgent

TOOL_TIMEOUT_S = 5.0
FILLER = "One moment, let me look that up."


def register_tools(agent: VoiceAgent, desk: SupportDesk) -> None:
    @agent.tool(timeout_s=TOOL_TIMEOUT_S, filler=FILLER)
    async def order_status(order_id: str) -> OrderStatus:
        """Look up an order by its four-digit number: its status (processing, shipped,
        delivered, cancelled), the item, the carrier and expected delivery date, and whether a
        refund is possible and for how much."""
        return await desk.order_status(order_id)

    @agent.tool(timeout_s=TOOL_TIMEOUT_S, filler=FILLER)
    async def request_refund(order_id: str, reason: str) -> RefundOutcome:
        """Refund a shipped or delivered order in full, once. Call it only after the caller
        has confirmed the amount. `reason` is the caller's reason in their words."""
        return await desk.request_refund(order_id, reason)

    @agent.tool(timeout_s=TOOL_TIMEOUT_S)
    async def transfer_to_human(reason: str) -> Transfer:
        """Put the caller in the queue for a human agent, with the reason they gave; then
        say goodbye, as a colleague takes over the call."""
        return await desk.transfer_to_human(reason)
