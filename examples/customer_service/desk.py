"""The support desk's operations, async: what the tools do, over the SQLite store.

Every database call runs in a worker thread (`asyncio.to_thread`), so the event loop that
paces the audio never waits on the disk. The clock is read here, at the edge, and passed into
the store and the phrasing.

Results are the frozen dataclasses of `results.py`.

Refund and handoff rows name the call they came from: the `CallContext` that the example's
`session_setup` hook put in `call.current_call` for the session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, date, datetime

from examples.customer_service.call import CallContext, current_call
from examples.customer_service.phrasing import (
    handoff_sentence,
    order_status_sentence,
    refund_done_sentence,
    refund_offer_sentence,
    refusal_sentence,
)
from examples.customer_service.policy import RefundDecision, refund_decision
from examples.customer_service.results import OrderStatus, RefundOutcome, Transfer
from examples.customer_service.spoken_numbers import ORDER_ID_DIGITS, order_number, spoken_digits
from examples.customer_service.store import (
    CallLogEntry,
    Customer,
    Handoff,
    Order,
    Refund,
    RefundExists,
    SupportStore,
)


def utc_now() -> datetime:
    return datetime.now(UTC)


class SupportDesk:
    """The operations behind the tools. `clock` gives the current time (tests pass a fixed one)."""

    def __init__(self, store: SupportStore, clock: Callable[[], datetime] = utc_now) -> None:
        self.store = store
        self._clock = clock

    def today(self) -> date:
        return self._clock().date()

    async def open(self) -> bool:
        """Create (and on first start seed) the database; True if it was seeded now."""
        return await asyncio.to_thread(self.store.create, self.today())

    async def close(self) -> None:
        await asyncio.to_thread(self.store.close)

    async def customer_by_phone(self, phone: str) -> Customer | None:
        return await asyncio.to_thread(self.store.customer_by_phone, phone)

    async def refunds(self) -> list[Refund]:
        return await asyncio.to_thread(self.store.refunds)

    async def handoffs(self) -> list[Handoff]:
        return await asyncio.to_thread(self.store.handoffs)

    async def call_log(self, session_id: str | None, limit: int) -> list[CallLogEntry]:
        return await asyncio.to_thread(self.store.call_log, session_id, limit)

    async def order_status(self, order_id: str) -> OrderStatus:
        normalized = _normalize(order_id)
        if normalized is None:
            return OrderStatus(order_id, False, _bad_order_id(order_id))
        order, existing = await asyncio.to_thread(self._order_and_refund, normalized)
        today = self.today()
        decision = refund_decision(normalized, order, existing)
        say = order_status_sentence(normalized, order, today)
        if order is None:
            return OrderStatus(normalized, False, say)
        return OrderStatus(
            order_id=normalized,
            found=True,
            say=say,
            status=order.status,
            item=order.item,
            carrier=order.carrier,
            eta=order.eta,
            delivered_on=order.delivered_on,
            amount_cents=order.amount_cents,
            refunded=existing is not None,
            refundable=decision.allowed,
            refund_offer=refund_offer_sentence(decision, order.item),
        )

    async def request_refund(self, order_id: str, reason: str) -> RefundOutcome:
        normalized = _normalize(order_id)
        if normalized is None:
            return RefundOutcome(order_id, False, _bad_order_id(order_id), refusal="invalid_order_id")
        call = current_call.get()
        now = self._clock()
        return await asyncio.to_thread(
            self._refund, normalized, reason.strip() or "requested by phone", call, now
        )

    async def transfer_to_human(self, reason: str) -> Transfer:
        call = current_call.get()
        customer_id = call.customer.id if call is not None and call.customer is not None else None
        handoff, position = await asyncio.to_thread(
            self._handoff, call.call_id if call else None, customer_id, reason.strip() or "caller asked"
        )
        return Transfer(handoff.id, position, handoff_sentence(position))

    # --- in a worker thread ------------------------------------------------------------

    def _order_and_refund(self, order_id: str) -> tuple[Order | None, Refund | None]:
        return self.store.order(order_id), self.store.refund_for(order_id)

    def _refund(self, order_id: str, reason: str, call: CallContext | None, now: datetime) -> RefundOutcome:
        order = self.store.order(order_id)
        decision: RefundDecision = refund_decision(order_id, order, self.store.refund_for(order_id))
        if not decision.allowed:
            return RefundOutcome(order_id, False, refusal_sentence(decision), refusal=decision.refusal)
        try:  # the UNIQUE order_id settles a race between two calls refunding the same order
            refund = self.store.add_refund(
                order_id, decision.amount_cents, reason, call.call_id if call else None, now
            )
        except RefundExists:
            refused = RefundDecision(order_id, False, 0, "already_refunded")
            return RefundOutcome(order_id, False, refusal_sentence(refused), refusal="already_refunded")
        return RefundOutcome(
            order_id, True, refund_done_sentence(order_id, refund.amount_cents), refund.amount_cents
        )

    def _handoff(self, call_id: str | None, customer_id: int | None, reason: str) -> tuple[Handoff, int]:
        handoff = self.store.add_handoff(call_id, customer_id, reason, self._clock())
        waiting = [h for h in self.store.handoffs() if h.status == "waiting" and h.id <= handoff.id]
        return handoff, len(waiting)


def _normalize(order_id: str) -> str | None:
    """'1234', ' 1234 ', 'one two three four' -> '1234'; None unless it has 4 digits."""
    text = order_id.strip()
    if text.isdigit():
        return text if len(text) == ORDER_ID_DIGITS else None
    return order_number(text)


def _bad_order_id(order_id: str) -> str:
    digits = "".join(c for c in order_id if c.isdigit())
    heard = f" I heard {spoken_digits(digits)}." if digits else ""
    return f"Order numbers have four digits.{heard} Could you say it again?"
