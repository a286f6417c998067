"""The Lua scripts of the Redis backplane (:mod:`.backplane`): each change of what is in
Redis is one script, so the stream and the hashes beside it always agree (the hashes
describe the stream up to its last entry)."""

from __future__ import annotations

from typing import Final

from agentcast.protocol.cluster import (
    BeatEntry,
    LeaveEntry,
    MessageEntry,
    PresenceEntry,
    SnapshotEntry,
)

__all__ = ["FORGET", "OP", "PRUNE", "SNAPSHOT", "WRITE"]

# KEYS: stream, procs, presence:<origin>, agents
# ARGV: maxlen, origin, op, ref, clients, authenticated, nfields, fields..., op args...
# (op args of 'm': nothing, or an agent's row field and value)
WRITE: Final = """
local nf = tonumber(ARGV[7])
local fields = {}
for i = 8, 7 + 2 * nf do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
local rest = 8 + 2 * nf
local op = ARGV[3]
local clients, authenticated, leaving = ARGV[5], ARGV[6], '0'
if op == 'p' then
  if ARGV[rest + 1] == 'offline' then
    redis.call('HDEL', KEYS[3], ARGV[rest])
  else
    redis.call('HSET', KEYS[3], ARGV[rest], ARGV[rest + 1])
  end
elseif op == 's' then
  redis.call('DEL', KEYS[3])
  for i = rest, #ARGV - 1, 2 do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]) end
elseif op == 'x' then
  leaving = '1'
elseif op == 'm' and ARGV[rest] then
  redis.call('HSET', KEYS[4], ARGV[rest], id .. ' ' .. ARGV[rest + 1])
end
if op == 'm' or op == 'p' then
  local old = redis.call('HGET', KEYS[2], ARGV[2])
  if old then
    local _, _, c, a = string.find(old, '^%S+ %S+ (%S+) (%S+)')
    if c then clients, authenticated = c, a end
  end
end
redis.call('HSET', KEYS[2], ARGV[2],
  id .. ' ' .. ARGV[4] .. ' ' .. clients .. ' ' .. authenticated .. ' ' .. leaving)
return id
"""

# KEYS: stream, procs, agents; ARGV: the presence key prefix
SNAPSHOT: Final = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local position = '0-0'
if #last > 0 then position = last[1][1] end
local procs = redis.call('HGETALL', KEYS[2])
local rows = {}
for i = 1, #procs, 2 do rows[#rows + 1] = redis.call('HGETALL', ARGV[1] .. procs[i]) end
return {position, procs, rows, redis.call('HGETALL', KEYS[3])}
"""

# KEYS: procs, presence:<process>; ARGV: process, the position it was last seen at
FORGET: Final = """
local record = redis.call('HGET', KEYS[1], ARGV[1])
if record and string.sub(record, 1, #ARGV[2] + 1) == ARGV[2] .. ' ' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"""

OP: Final[dict[type, bytes]] = {
    MessageEntry: b"m",
    PresenceEntry: b"p",
    SnapshotEntry: b"s",
    BeatEntry: b"b",
    LeaveEntry: b"x",
}

# KEYS: agents; ARGV: field, value, field, value...: delete each row still holding the
# value it was judged stale by (a row written meanwhile is newer: it stays)
PRUNE: Final = """
local deleted = 0
for i = 1, #ARGV - 1, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    deleted = deleted + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return deleted
"""
