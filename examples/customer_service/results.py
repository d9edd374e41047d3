"""What the desk's tools return: a brain reads the fields (`ToolResult.value`), a language
model gets them as JSON (`ToolResult.output`). Each carries `say`, the sentence the desk would
speak, so a small model can read it out as it is."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True, slots=True)
class OrderStatus:
    """`found` False: no such order (or `order_id` was not 4 digits). `refundable`: the refund
    rules allow one now, for `amount_cents`."""

    order_id: str
    found: bool
    say: str
    status: str | None = None
    item: str | None = None
    carrier: str | None = None
    eta: date | None = None
    delivered_on: date | None = None
    amount_cents: int = 0
    refunded: bool = False
    refundable: bool = False
    refund_offer: str | None = None  # what to ask before refunding (or why there is none)


@dataclass(frozen=True, slots=True)
class RefundOutcome:
    """`refunded` True: a refund of `amount_cents` was recorded now; else `refusal` says why
    (not_found, not_shipped, cancelled, already_refunded, invalid_order_id)."""

    order_id: str
    refunded: bool
    say: str
    amount_cents: int = 0
    refusal: str | None = None


@dataclass(frozen=True, slots=True)
class Transfer:
    """The caller is queued for a human: `queue_position` 1 is next. The row in `handoffs`
    is what a human agent's console (or a telephony backend redirecting the call, see the
    README) picks up."""

    handoff_id: int
    queue_position: int
    say: str
