"""The support desk's SQLite database: schema, seed data and queries (synchronous).

A `SupportStore` keeps one connection, used by one thread at a time under a lock, so it can
be called from any thread; the async layer (`desk.py`) calls these methods through
`asyncio.to_thread`, so the event loop never waits on the disk. (A connection per call costs
a WAL checkpoint and an fsync each time the last one closes.) Writes run in `BEGIN IMMEDIATE`
transactions; the database is in WAL mode with synchronous=NORMAL; other processes may share
the file (SQLite's locking, a 5 s busy timeout).

Order of calls: `SupportStore(path).create(today)` once at start (creates the tables, and
seeds them when the database is new), then any query; `close()` at the end. Dates and times are passed in (`today`,
`now`); nothing here reads the clock.

Tables:
- customers(id, name, phone UNIQUE, email)
- orders(id: 4 digits, customer_id, item, amount_cents, status: processing | shipped |
  delivered | cancelled, carrier and eta (shipped), placed_on, delivered_on (delivered))
- refunds(order_id UNIQUE: an order is refunded at most once, amount_cents, reason, call_id)
- handoffs(call_id, customer_id, reason, status "waiting"): the queue for a human agent
- call_log(session_id, at, kind, item_id, text, detail JSON): what happened in each call
  (session_id is Voxgate's; its session_started row holds the call_id in its detail)
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Final, Literal, cast

OrderStatus = Literal["processing", "shipped", "delivered", "cancelled"]
BUSY_TIMEOUT_S: Final = 5.0

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS customers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    phone TEXT NOT NULL UNIQUE,
    email TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY CHECK (length(id) = 4 AND id NOT GLOB '*[^0-9]*'),
    customer_id INTEGER NOT NULL REFERENCES customers(id),
    item TEXT NOT NULL,
    amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
    status TEXT NOT NULL CHECK (status IN ('processing', 'shipped', 'delivered', 'cancelled')),
    carrier TEXT,
    eta TEXT,
    placed_on TEXT NOT NULL,
    delivered_on TEXT
);
CREATE TABLE IF NOT EXISTS refunds (
    id INTEGER PRIMARY KEY,
    order_id TEXT NOT NULL UNIQUE REFERENCES orders(id),
    amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
    reason TEXT NOT NULL,
    call_id TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS handoffs (
    id INTEGER PRIMARY KEY,
    call_id TEXT,
    customer_id INTEGER REFERENCES customers(id),
    reason TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'waiting',
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS call_log (
    id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    item_id TEXT,
    text TEXT,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS call_log_session ON call_log(session_id, id);
"""


@dataclass(frozen=True, slots=True)
class Customer:
    id: int
    name: str
    phone: str
    email: str


@dataclass(frozen=True, slots=True)
class Order:
    id: str
    customer_id: int
    item: str
    amount_cents: int
    status: OrderStatus
    carrier: str | None
    eta: date | None
    placed_on: date
    delivered_on: date | None


@dataclass(frozen=True, slots=True)
class Refund:
    id: int
    order_id: str
    amount_cents: int
    reason: str
    call_id: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Handoff:
    id: int
    call_id: str | None
    customer_id: int | None
    reason: str
    status: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class CallLogEntry:
    id: int
    session_id: str
    at: datetime
    kind: str
    item_id: str | None
    text: str | None
    detail: Mapping[str, object]


class RefundExists(Exception):
    """The order already has a refund (the UNIQUE order_id said so)."""


def seed_rows(today: date) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """The demo customers and orders, dated relative to `today` so ETAs stay in the future."""
    customers: list[tuple[object, ...]] = [
        (1, "Ada Lovelace", "+15550100001", "ada@example.com"),
        (2, "Grace Hopper", "+15550100002", "grace@example.com"),
        (3, "Alan Turing", "+15550100003", "alan@example.com"),
    ]

    def day(offset: int) -> str:
        return (today + timedelta(days=offset)).isoformat()

    orders: list[tuple[object, ...]] = [
        ("1234", 1, "wireless headphones", 5990, "shipped", "UPS", day(2), day(-2), None),
        ("2345", 1, "coffee grinder", 8900, "delivered", None, None, day(-9), day(-4)),
        ("3456", 2, "running shoes", 12000, "processing", None, None, day(0), None),
        ("4567", 2, "desk lamp", 3450, "cancelled", None, None, day(-6), None),
        ("5678", 3, "mechanical keyboard", 14900, "delivered", None, None, day(-12), day(-7)),
        ("6789", 3, "phone case", 1999, "shipped", "FedEx", day(1), day(-1), None),
        ("7890", 1, "water bottle", 2450, "processing", None, None, day(-1), None),
    ]
    return customers, orders


class SupportStore:
    """The database at `path`; see the module docstring for the order of calls."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """The store's one connection (opened on first use), held by one thread at a time."""
        with self._lock:
            if self._db is None:
                db = sqlite3.connect(
                    self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
                )
                db.execute("PRAGMA foreign_keys = ON")
                # WAL with NORMAL: a commit survives the process crashing without an fsync each
                # (a power cut may lose the last ones); FULL would fsync every call-log row
                db.execute("PRAGMA synchronous = NORMAL")
                self._db = db
            yield self._db

    def close(self) -> None:
        """Close the connection (a later call opens it again)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A connection inside one BEGIN IMMEDIATE transaction, committed on success."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def create(self, today: date) -> bool:
        """Create the tables if missing and seed a new database; True if it seeded."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode = WAL")
            db.executescript(SCHEMA)
        with self._write() as db:
            if db.execute("SELECT count(*) FROM customers").fetchone()[0]:
                return False
            customers, orders = seed_rows(today)
            db.executemany("INSERT INTO customers VALUES (?, ?, ?, ?)", customers)
            db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", orders)
            return True

    # --- reads -------------------------------------------------------------------------

    def order(self, order_id: str) -> Order | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT id, customer_id, item, amount_cents, status, carrier, eta, placed_on,"
                " delivered_on FROM orders WHERE id = ?",
                (order_id,),
            ).fetchone()
        if row is None:
            return None
        return Order(
            id=row[0],
            customer_id=row[1],
            item=row[2],
            amount_cents=row[3],
            status=cast(OrderStatus, row[4]),
            carrier=row[5],
            eta=_date(row[6]),
            placed_on=date.fromisoformat(row[7]),
            delivered_on=_date(row[8]),
        )

    def customer(self, customer_id: int) -> Customer | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT id, name, phone, email FROM customers WHERE id = ?", (customer_id,)
            ).fetchone()
        return None if row is None else Customer(*row)

    def customer_by_phone(self, phone: str) -> Customer | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT id, name, phone, email FROM customers WHERE phone = ?", (phone,)
            ).fetchone()
        return None if row is None else Customer(*row)

    def refund_for(self, order_id: str) -> Refund | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT id, order_id, amount_cents, reason, call_id, created_at FROM refunds"
                " WHERE order_id = ?",
                (order_id,),
            ).fetchone()
        return None if row is None else _refund(row)

    def refunds(self) -> list[Refund]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT id, order_id, amount_cents, reason, call_id, created_at FROM refunds ORDER BY id"
            ).fetchall()
        return [_refund(row) for row in rows]

    def handoffs(self) -> list[Handoff]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT id, call_id, customer_id, reason, status, created_at FROM handoffs ORDER BY id"
            ).fetchall()
        return [
            Handoff(row[0], row[1], row[2], row[3], row[4], datetime.fromisoformat(row[5])) for row in rows
        ]

    def call_log(self, session_id: str | None = None, limit: int = 200) -> list[CallLogEntry]:
        """The newest `limit` entries (of one session, if given), oldest first."""
        query = "SELECT id, session_id, at, kind, item_id, text, detail FROM call_log"
        args: tuple[object, ...] = ()
        if session_id is not None:
            query += " WHERE session_id = ?"
            args = (session_id,)
        with self._connect() as db:
            rows = db.execute(f"{query} ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [
            CallLogEntry(r[0], r[1], datetime.fromisoformat(r[2]), r[3], r[4], r[5], json.loads(r[6]))
            for r in reversed(rows)
        ]

    # --- writes ------------------------------------------------------------------------

    def add_refund(
        self, order_id: str, amount_cents: int, reason: str, call_id: str | None, now: datetime
    ) -> Refund:
        """Record a refund; raises RefundExists if the order has one already."""
        try:
            with self._write() as db:
                cursor = db.execute(
                    "INSERT INTO refunds (order_id, amount_cents, reason, call_id, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (order_id, amount_cents, reason, call_id, now.isoformat()),
                )
                refund_id = cursor.lastrowid
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" in str(exc):
                raise RefundExists(order_id) from exc
            raise
        assert refund_id is not None
        return Refund(refund_id, order_id, amount_cents, reason, call_id, now)

    def add_handoff(
        self, call_id: str | None, customer_id: int | None, reason: str, now: datetime
    ) -> Handoff:
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO handoffs (call_id, customer_id, reason, created_at) VALUES (?, ?, ?, ?)",
                (call_id, customer_id, reason, now.isoformat()),
            )
            handoff_id = cursor.lastrowid
        assert handoff_id is not None
        return Handoff(handoff_id, call_id, customer_id, reason, "waiting", now)

    def add_call_log(
        self,
        session_id: str,
        at: datetime,
        kind: str,
        item_id: str | None = None,
        text: str | None = None,
        detail: Mapping[str, object] | None = None,
    ) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO call_log (session_id, at, kind, item_id, text, detail) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    session_id,
                    at.isoformat(),
                    kind,
                    item_id,
                    text,
                    json.dumps(dict(detail or {}), default=str),
                ),
            )


def _date(value: str | None) -> date | None:
    return None if value is None else date.fromisoformat(value)


def _refund(row: tuple[object, ...]) -> Refund:
    return Refund(
        id=cast(int, row[0]),
        order_id=cast(str, row[1]),
        amount_cents=cast(int, row[2]),
        reason=cast(str, row[3]),
        call_id=cast("str | None", row[4]),
        created_at=datetime.fromisoformat(cast(str, row[5])),
    )
