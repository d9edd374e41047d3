"""State that the replicas of one deployment share, in Redis (`VOXGATE_REDIS_URL`).

`redis_state` is the only module that talks to Redis: atomic Lua scripts for token buckets,
session slots and client secrets, and call parameters, each call bounded by a timeout. The
policies that use it live with their callers: `server/http/cluster_admission.py` (rate limits,
per-replica and global session caps, slot heartbeats), `server/http/access.py`
(`RedisClientSecrets`), `server/telephony/call_parameters.py`.

Without Redis none of this is built: each process keeps its limits, client secrets and call
parameters in memory, as before.
"""
