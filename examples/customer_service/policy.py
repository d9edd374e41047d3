"""The refund rules, as one pure function: which orders may be refunded, and for how much.

- only a shipped or delivered order may be refunded (a processing order is cancelled instead,
  a cancelled one was never charged);
- an order is refunded at most once (the refunds table enforces it too: order_id is UNIQUE);
- the amount is the order's amount; a caller cannot name another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from examples.customer_service.store import Order, Refund

RefundRefusal = Literal["not_found", "not_shipped", "cancelled", "already_refunded"]


@dataclass(frozen=True, slots=True)
class RefundDecision:
    """`allowed` with the `amount_cents` to refund, or not allowed for `refusal`."""

    order_id: str
    allowed: bool
    amount_cents: int
    refusal: RefundRefusal | None


def refund_decision(order_id: str, order: Order | None, existing: Refund | None) -> RefundDecision:
    """May `order` (None: no such order) be refunded, given its `existing` refund if any?"""
    if order is None:
        return RefundDecision(order_id, False, 0, "not_found")
    if existing is not None:
        return RefundDecision(order_id, False, 0, "already_refunded")
    if order.status == "cancelled":
        return RefundDecision(order_id, False, 0, "cancelled")
    if order.status == "processing":
        return RefundDecision(order_id, False, 0, "not_shipped")
    return RefundDecision(order_id, True, order.amount_cents, None)
