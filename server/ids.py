"""Ids of sessions, items, responses and events."""

from __future__ import annotations

import itertools
import os
import secrets


def new_id(prefix: str) -> str:
    """`prefix` + "_" + 20 hex digits: 10 drawn at random once per process, then a counter.

    Unique within a process; two processes repeat each other's ids only if their random halves
    match (1 in 2**40). Ids name sessions, items, responses and events and are no secrets:
    nothing grants access by one, and they reveal their order of issue. The counter replaces
    an os.urandom read per id, i.e. per server event (one per 20 ms audio delta).
    """
    return f"{prefix}_{_id_stem}{next(_id_counter):010x}"


_id_counter = itertools.count()
_id_stem = secrets.token_hex(5)


def _new_id_stem() -> None:
    global _id_stem
    _id_stem = secrets.token_hex(5)


os.register_at_fork(after_in_child=_new_id_stem)  # a forked worker must not repeat its parent's ids
