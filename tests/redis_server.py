"""The shared-state tests' real redis-server (loadtests/redis_process.py), skipped with a
reason where Debian's redis-server package is not installed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtests.redis_process import RedisProcess, RedisUnavailable, free_port, redis_server_path
from loadtests.redis_process import redis_server as start_redis

__all__ = ["RedisProcess", "free_port", "redis_server"]


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[RedisProcess]:
    if redis_server_path() is None:
        pytest.skip("redis-server is not installed (Debian package redis-server; scripts/system-deps.sh)")
    try:
        with start_redis(workdir) as process:
            yield process
    except RedisUnavailable as exc:
        pytest.fail(str(exc))
