"""What the desk says: amounts, dates and order facts as short sentences for a voice.

Pure functions; `today` is passed in. Order numbers are read digit by digit ("one two three
four"), as a caller says them back, and amounts in words a speech synthesiser reads well.
"""

from __future__ import annotations

from datetime import date

from examples.customer_service.policy import RefundDecision
from examples.customer_service.spoken_numbers import spoken_digits
from examples.customer_service.store import Order

_ORDINAL_SUFFIX = {1: "st", 2: "nd", 3: "rd"}


def spoken_amount(cents: int) -> str:
    """5990 -> '59 dollars and 90 cents'; 2000 -> '20 dollars'; 1 -> '1 cent'."""
    dollars, rest = divmod(cents, 100)
    parts = []
    if dollars:
        parts.append(f"{dollars} dollar{'' if dollars == 1 else 's'}")
    if rest or not dollars:
        parts.append(f"{rest} cent{'' if rest == 1 else 's'}")
    return " and ".join(parts)


def spoken_date(day: date, today: date) -> str:
    """'today', 'tomorrow', 'yesterday', else 'Thursday, December 3rd'."""
    offset = (day - today).days
    if offset == 0:
        return "today"
    if offset == 1:
        return "tomorrow"
    if offset == -1:
        return "yesterday"
    suffix = "th" if 10 <= day.day % 100 <= 20 else _ORDINAL_SUFFIX.get(day.day % 10, "th")
    return f"{day:%A}, {day:%B} {day.day}{suffix}"


def order_status_sentence(order_id: str, order: Order | None, today: date) -> str:
    said = spoken_digits(order_id)
    if order is None:
        return f"I couldn't find an order {said}."
    if order.status == "processing":
        return f"Order {said}, the {order.item}, is being prepared and hasn't shipped yet."
    if order.status == "shipped":
        when = f" and should arrive {_on(order.eta, today)}" if order.eta is not None else ""
        carrier = f" with {order.carrier}" if order.carrier else ""
        return f"Order {said}, the {order.item}, has shipped{carrier}{when}."
    if order.status == "delivered":
        when = f" {_on(order.delivered_on, today)}" if order.delivered_on is not None else ""
        return f"Order {said}, the {order.item}, was delivered{when}."
    return f"Order {said}, the {order.item}, was cancelled, so you were not charged."


def refund_offer_sentence(decision: RefundDecision, item: str | None) -> str:
    """Before a refund: what it would be, or why there can be none."""
    said = spoken_digits(decision.order_id)
    if decision.allowed:
        what = f"the {item}" if item else f"order {said}"
        return (
            f"I can refund {spoken_amount(decision.amount_cents)} for {what}, order {said}."
            " Shall I go ahead? Please say yes or no."
        )
    return refusal_sentence(decision)


def refusal_sentence(decision: RefundDecision) -> str:
    said = spoken_digits(decision.order_id)
    match decision.refusal:
        case "not_found":
            return f"I couldn't find an order {said}."
        case "already_refunded":
            return f"Order {said} has already been refunded."
        case "cancelled":
            return f"Order {said} was cancelled, so you were never charged for it."
        case "not_shipped":
            return f"Order {said} hasn't shipped yet, so there is nothing to refund; I can cancel it instead."
        case _:
            return f"I can't refund order {said}."


def refund_done_sentence(order_id: str, amount_cents: int) -> str:
    return (
        f"Done. {spoken_amount(amount_cents)} for order {spoken_digits(order_id)} will be back on"
        " your card within five business days."
    )


def handoff_sentence(queue_position: int) -> str:
    ahead = queue_position - 1
    waiting = (
        "You're next in line."
        if ahead == 0
        else f"There {'is' if ahead == 1 else 'are'} {ahead} caller{'' if ahead == 1 else 's'} ahead of you."
    )
    return f"I'm transferring you to a colleague now. {waiting} Thank you for calling."


def _on(day: date, today: date) -> str:
    spoken = spoken_date(day, today)
    return spoken if spoken in ("today", "tomorrow", "yesterday") else f"on {spoken}"
