"""Lua scripts: every multi-key change to a request happens in one of these.

Keys are always passed in the order of ``keys.request_keys``:
KEYS[1] meta, KEYS[2] tasks, KEYS[3] leases, KEYS[4] results, KEYS[5] func.
"""

from __future__ import annotations

#: Record one task's outcome, once. ARGV: index, status, now, then field/value
#: pairs for the stream entry. The task leaves ``tasks`` in the same step, so a
#: second attempt at the same index finds nothing to record and returns 0.
RECORD = """
local idx = ARGV[1]
local status = ARGV[2]
if redis.call('HDEL', KEYS[2], idx) == 0 then
  return 0
end
redis.call('HDEL', KEYS[3], idx)
local entry = {'index', idx, 'status', status}
for i = 4, #ARGV do entry[#entry + 1] = ARGV[i] end
redis.call('XADD', KEYS[4], '*', unpack(entry))
redis.call('HINCRBY', KEYS[1], 'n_' .. status, 1)
if redis.call('HLEN', KEYS[2]) == 0
   and redis.call('HGET', KEYS[1], 'status') ~= 'cancelled' then
  redis.call('HSET', KEYS[1], 'status', 'done', 'finished', ARGV[3])
end
return 1
"""

#: A worker asked for an index that is not part of the request. ARGV: index,
#: reason, host, pid, now. Recorded only if the request exists.
REJECT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('XADD', KEYS[4], '*', 'index', ARGV[1], 'status', 'rejected',
           'error', ARGV[2], 'host', ARGV[3], 'pid', ARGV[4],
           'started', ARGV[5], 'finished', ARGV[5])
redis.call('HINCRBY', KEYS[1], 'n_rejected', 1)
return 1
"""

#: Give up on a request: every task without an outcome is recorded as lost
#: with the reason in ARGV[1], which is also kept in the meta; ARGV[2] is now,
#: ARGV[3] the request's new status: cancelled, or done when the tasks died on
#: their own and the request is simply over. A request whose tasks all have
#: outcomes is left as it is. Returns how many tasks were given up, -1 if the
#: request is unknown.
CANCEL = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
local pending = redis.call('HKEYS', KEYS[2])
if #pending == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'finished', ARGV[2], 'reason', ARGV[1])
for _, idx in ipairs(pending) do
  redis.call('XADD', KEYS[4], '*', 'index', idx, 'status', 'lost', 'error', ARGV[1],
             'started', ARGV[2], 'finished', ARGV[2])
end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HINCRBY', KEYS[1], 'n_lost', #pending)
return #pending
"""
