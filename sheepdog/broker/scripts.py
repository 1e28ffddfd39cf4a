"""Lua scripts: every multi-key change to a request happens in one of these.

Keys are always passed in the order of ``keys.request_keys``:
KEYS[1] meta, KEYS[2] tasks, KEYS[3] leases, KEYS[4] results, KEYS[5] func,
KEYS[6] claims, KEYS[7] retry, KEYS[8] queue.

The rules they keep (docs/faults.md says what they mean for users):

- Every script first checks the request's ``token``: a worker of a request
  that is gone (its id reused after a flush) touches nothing.
- A task is *held* by the attempt named in its claim. Only the holder may
  record its outcome or push its lease forward (fencing): a worker presumed
  dead that comes back late cannot overwrite a retry's result.
- Times are the broker's (``TIME``), never a node's or the laptop's clock.
"""

from __future__ import annotations

#: Shared Lua: the broker's clock, and a claim split into its fields.
_PRELUDE = """
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function parse_claim(text)
  if not text then return nil end
  local a, f, l, h = string.match(text, '^(%d+) (%d+) (%d+) (%S+)')
  local rest = string.match(text, '^%d+ %d+ %d+ %S+ (.*)$') or ''
  return {attempt = tonumber(a), first = tonumber(f), level = tonumber(l), holder = h,
          rest = rest}
end
"""

#: A worker takes task ARGV[2] for a new attempt. ARGV: token, index, holder,
#: level, host, pid, job, lease seconds. Returns {'run', attempt, func, args,
#: python} or {reason}: gone (no such request), cancelled, outside (index not
#: in the request; then n_tasks), done (it has its final outcome), busy
#: (another attempt holds it; then that claim).
CLAIM = _PRELUDE + """
local meta = redis.call('HMGET', KEYS[1], 'token', 'status', 'n_tasks', 'python')
if meta[1] ~= ARGV[1] then return {'gone'} end
if meta[2] == 'cancelled' then return {'cancelled'} end
local idx = ARGV[2]
local i = tonumber(idx)
if not i or i < 1 or i > tonumber(meta[3]) then return {'outside', meta[3]} end
local args = redis.call('HGET', KEYS[2], idx)
if not args then return {'done'} end
local text = redis.call('HGET', KEYS[6], idx)
local prev = parse_claim(text)
if prev and prev.holder ~= '-' then return {'busy', text} end
local attempt, first = 1, 1
if prev then attempt, first = prev.attempt + 1, prev.first end
local t = now()
redis.call('HSET', KEYS[6], idx, table.concat({attempt, first, ARGV[4], ARGV[3],
  string.format('%.3f', t), ARGV[5], ARGV[6], ARGV[7]}, ' '))
redis.call('ZADD', KEYS[3], t + tonumber(ARGV[8]), idx)
redis.call('HDEL', KEYS[7], idx)
return {'run', attempt, redis.call('GET', KEYS[5]), args, meta[4]}
"""

#: The holder of tasks ARGV[4..] is alive: their leases now end ARGV[3] seconds
#: from now. ARGV: token, holder, lease seconds, indices. Returns how many of
#: the indices it still holds (the others were declared lost, or finished), or
#: -1 if the request is gone.
HEARTBEAT = _PRELUDE + """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return -1 end
local deadline = now() + tonumber(ARGV[3])
local held = 0
for i = 4, #ARGV do
  local claim = parse_claim(redis.call('HGET', KEYS[6], ARGV[i]))
  if claim and claim.holder == ARGV[2] then
    redis.call('ZADD', KEYS[3], deadline, ARGV[i])
    held = held + 1
  end
end
return held
"""

#: Record the end of one attempt of task ARGV[2]. ARGV: token, index, holder,
#: attempt, status (ok/error/lost), cause, check, then field/value pairs for
#: the stream entry (signed by the caller over index, attempt, status, cause,
#: payload and error).
#:
#: ``holder`` is the claim's holder; '-' records a lost attempt that never got
#: to claim (its worker did not start), and is then attempt ``prev + 1``.
#: ``check`` 'expired' accepts only if the holder's lease has run out (the
#: reaper; a late heartbeat wins); 'unstarted' only with holder '-' and never
#: retries (a task cancelled before any attempt of it runs). An outcome that
#: may be retried (lost, or error with retry_errors, or over memory with
#: retry_memory, while attempts are left) is written with next=retry, the task
#: waits in ``retry`` and its
#: claim keeps only the attempt numbers; otherwise it is final: the task leaves
#: ``tasks``, ``claims`` and ``retry``, and the request is done when no task is
#: left. In worker mode a retried task goes back to the head of ``queue``
#: instead, for the running workers. Returns 1 final, 2 retried, 0 not the
#: holder (or already final), -1 request gone, -2 request cancelled.
RECORD = _PRELUDE + """
local meta = redis.call('HMGET', KEYS[1], 'token', 'status', 'max_attempts',
                        'retry_errors', 'retry_memory', 'mode')
if meta[1] ~= ARGV[1] then return -1 end
if meta[2] == 'cancelled' then return -2 end
local idx, holder, attempt, status, cause = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6]
if redis.call('HEXISTS', KEYS[2], idx) == 0 then return 0 end
local claim = parse_claim(redis.call('HGET', KEYS[6], idx))
local first, level = 1, 0
if ARGV[7] == 'unstarted' and holder ~= '-' then return 0 end
if holder == '-' then
  local prev = claim and claim.attempt or 0
  if (claim and claim.holder ~= '-') or attempt ~= prev + 1 then return 0 end
  if claim then first, level = claim.first, claim.level end
else
  if not claim or claim.holder ~= holder or claim.attempt ~= attempt then return 0 end
  first, level = claim.first, claim.level
  if ARGV[7] == 'expired' then
    local deadline = redis.call('ZSCORE', KEYS[3], idx)
    if deadline and tonumber(deadline) > now() then return 0 end
  end
end
local retry = false
if attempt - first + 1 < tonumber(meta[3] or '1') and ARGV[7] ~= 'unstarted' then
  retry = status == 'lost'
    or (status == 'error' and (meta[4] == '1' or (cause == 'memory' and meta[5] == '1')))
end
redis.call('ZREM', KEYS[3], idx)
local entry = {'index', idx, 'attempt', attempt, 'status', status}
if cause ~= '' then
  entry[#entry + 1] = 'cause'
  entry[#entry + 1] = cause
end
for i = 8, #ARGV do entry[#entry + 1] = ARGV[i] end
if retry then
  if cause == 'memory' then level = level + 1 end
  entry[#entry + 1] = 'next'
  entry[#entry + 1] = 'retry'
  -- Nobody holds it now; who last did (started, host, pid, job) stays for the record.
  local rest = claim and claim.rest or ''
  redis.call('HSET', KEYS[6], idx, table.concat({attempt, first, level, '-', rest}, ' '))
  if meta[6] == 'workers' then
    redis.call('LPUSH', KEYS[8], idx .. '-' .. idx)  -- the running workers take it next
  else
    redis.call('HSET', KEYS[7], idx, level)
  end
  redis.call('HINCRBY', KEYS[1], 'n_retried', 1)
  redis.call('XADD', KEYS[4], '*', unpack(entry))
  return 2
end
redis.call('HDEL', KEYS[2], idx)
redis.call('HDEL', KEYS[6], idx)
redis.call('HDEL', KEYS[7], idx)
redis.call('XADD', KEYS[4], '*', unpack(entry))
redis.call('HINCRBY', KEYS[1], 'n_' .. status, 1)
if redis.call('HLEN', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[1], 'status', 'done', 'finished', string.format('%.6f', now()))
end
return 1
"""

#: A worker asked for an index that is not part of the request. ARGV: token,
#: then field/value pairs of the (signed) entry. Returns 1, or 0 if the
#: request is gone.
REJECT = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
local entry = {'status', 'rejected', 'attempt', '0'}
for i = 2, #ARGV do entry[#entry + 1] = ARGV[i] end
redis.call('XADD', KEYS[4], '*', unpack(entry))
redis.call('HINCRBY', KEYS[1], 'n_rejected', 1)
return 1
"""

#: Give up on a request: one stream entry (status cancelled, index 0) stands
#: for every task without a final outcome, so cancelling a million tasks is
#: one small write; the collator records each of them as lost. ARGV: token,
#: reason, mac. Tasks, claims, leases and retries go (UNLINK frees them in
#: the background). Returns how many tasks were given up, -1 if the request is
#: unknown; a request whose tasks all have outcomes is left as it is (0).
CANCEL = _PRELUDE + """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return -1 end
local pending = redis.call('HLEN', KEYS[2])
if pending == 0 then return 0 end
local t = string.format('%.6f', now())
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished', t, 'reason', ARGV[2])
redis.call('XADD', KEYS[4], '*', 'index', '0', 'attempt', '0', 'status', 'cancelled',
           'error', ARGV[2], 'mac', ARGV[3], 'started', t, 'finished', t)
redis.call('UNLINK', KEYS[2], KEYS[3], KEYS[6], KEYS[7], KEYS[8])
redis.call('HINCRBY', KEYS[1], 'n_lost', pending)
return pending
"""

#: Worker mode: a worker takes up to ARGV[8] tasks from the head of ``queue``.
#: ARGV: token, holder, level, host, pid, job, lease seconds, how many, and
#: '1' to get the function too. Every task taken is claimed as by CLAIM, with
#: one holder for the worker. A task that needs more memory than the worker
#: has (a memory level above ARGV[3]) is parked in ``retry`` for a bigger job.
#: Looks at no more than 4 * ARGV[8] + 64 indices per call (ranges may hold
#: tasks finished by an earlier submission). Returns {'run', python, func or
#: '', index, attempt, args, index, attempt, args...}: no tasks means 'again'
#: if the queue is not empty yet; {'empty'} when it is; {'gone'} or
#: {'cancelled'} as CLAIM.
CLAIM_NEXT = _PRELUDE + """
local meta = redis.call('HMGET', KEYS[1], 'token', 'status', 'python')
if meta[1] ~= ARGV[1] then return {'gone'} end
if meta[2] == 'cancelled' then return {'cancelled'} end
local level, want = tonumber(ARGV[3]), tonumber(ARGV[8])
local t = now()
local deadline = t + tonumber(ARGV[7])
local started = string.format('%.3f', t)
local taken, looked = {}, 0
local budget = 4 * want + 64
while #taken < 3 * want and looked < budget do
  local range = redis.call('LPOP', KEYS[8])
  if not range then break end
  local a, b = string.match(range, '^(%d+)-(%d+)$')
  a, b = tonumber(a), tonumber(b)
  local last = math.min(b, a + math.min(want - #taken / 3, budget - looked) - 1)
  if last < b then redis.call('LPUSH', KEYS[8], (last + 1) .. '-' .. b) end
  for i = a, last do
    looked = looked + 1
    local idx = tostring(i)
    local args = redis.call('HGET', KEYS[2], idx)
    local prev = args and parse_claim(redis.call('HGET', KEYS[6], idx))
    if args and prev and prev.holder == '-' and prev.level > level then
      redis.call('HSET', KEYS[7], idx, prev.level)
    elseif args and (not prev or prev.holder == '-') then
      local attempt, first = 1, 1
      if prev then attempt, first = prev.attempt + 1, prev.first end
      redis.call('HSET', KEYS[6], idx, table.concat({attempt, first, level, ARGV[2], started,
        ARGV[4], ARGV[5], ARGV[6]}, ' '))
      redis.call('ZADD', KEYS[3], deadline, idx)
      redis.call('HDEL', KEYS[7], idx)
      taken[#taken + 1] = idx
      taken[#taken + 1] = attempt
      taken[#taken + 1] = args
    end
  end
end
if #taken == 0 and redis.call('LLEN', KEYS[8]) == 0 then return {'empty'} end
local func = ''
if ARGV[9] == '1' then func = redis.call('GET', KEYS[5]) end
return {'run', meta[3], func, unpack(taken)}
"""

#: Worker mode: tasks parked in ``retry`` go back to the head of ``queue``, for
#: a job started at their memory level. ARGV: token. Returns {highest level
#: moved or -1 if none, whether the queue has anything}.
REQUEUE = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return {-1, 0} end
local parked = redis.call('HGETALL', KEYS[7])
local highest = -1
for i = 1, #parked, 2 do
  redis.call('LPUSH', KEYS[8], parked[i] .. '-' .. parked[i])
  highest = math.max(highest, tonumber(parked[i + 1]))
end
redis.call('DEL', KEYS[7])
return {highest, redis.call('LLEN', KEYS[8])}
"""

#: Running attempts whose lease has run out: a flat list of index, claim,
#: deadline (at most ARGV[2] of them). ARGV: token, limit.
EXPIRED = _PRELUDE + """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return {} end
local found = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now(), 'WITHSCORES',
                         'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for i = 1, #found, 2 do
  out[#out + 1] = found[i]
  out[#out + 1] = redis.call('HGET', KEYS[6], found[i]) or ''
  out[#out + 1] = found[i + 1]
end
return out
"""

#: Take the tasks waiting for a new attempt: a flat list of index, level; the
#: caller starts them (or puts them back). ARGV: token.
TAKE_RETRIES = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return {} end
local waiting = redis.call('HGETALL', KEYS[7])
redis.call('DEL', KEYS[7])
return waiting
"""

#: A new request id: INCR of KEYS[1] (the broker's sequence), and at least
#: ARGV[1], so that ids stay unique in a dbfile that also holds requests of
#: other brokers.
NEXT_ID = """
local lowest = tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < lowest - 1 then redis.call('SET', KEYS[1], lowest - 1) end
return redis.call('INCR', KEYS[1])
"""
