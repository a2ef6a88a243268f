"""Lua scripts behind every write to a generation: one atomic step each, so races between API and worker are safe.

The scripts on one generation take KEYS[1] = the events stream, KEYS[2] = the state hash (same `{id}` hash
tag); those that append events also KEYS[3] = the bucket's doorbell (same tag), which they ring. A combined
script calls the ones it combines as Lua functions, so each step is written once.
"""

# Ring the doorbell: one entry naming the events stream just written and its last entry id (`id` in the script
# that includes this), for the API readers (api/stream_hub.py).
# Capped (an API that falls this far behind reads every stream it follows anyway, within a second) and
# expiring a day after the bucket's last event. Without KEYS[3] (a caller of an older version) no ring: the
# readers then see the write within their resync interval instead of at once.
_RING = """
if KEYS[3] then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', 1000, '*', 'k', KEYS[1], 'i', id)
  redis.call('EXPIRE', KEYS[3], 86400)
end
"""


def _function(name: str, body: str) -> str:
    """A script as a Lua function of its own KEYS and ARGV, so that a combined script reuses it unchanged."""
    return f"local function {name}(KEYS, ARGV)\n{body}end\n"


# Append events for the current attempt. Refuses once a terminal event exists (exactly one terminal event)
# or when the caller's attempt is not the current one (a stale worker after a retry writes nothing).
# A write carries its attempt's sequence number: a write retried after its reply was lost (Redis went away
# mid-call) is recognised and not appended twice; it answers as written, with the stream's last id.
# ARGV: attempt, maxlen, live_ttl, finished_ttl, terminal_status ('' if none), terminal_fields_json,
#       terminal_id ('' for Redis to choose; the worker chooses it so the durable record can carry it),
#       first ('1' on a writer's first write: only then can this be the stream's first entry),
#       seq (1, 2, ... per attempt; '0': no duplicate check), event...
# Returns {code, last_id, cancel}: code 1 written, 0 refused (terminal exists), -1 refused (stale attempt).
PUBLISH = (
    """
local st = redis.call('HMGET', KEYS[2], 'terminal_id', 'attempt', 'cancel', 'status', 'pub_seq')
local cancel = st[3] or ''
if not st[4] then return {-2, '', cancel} end
local seq = tonumber(ARGV[9])
if seq > 0 and tostring(st[2]) == ARGV[1] and seq <= (tonumber(st[5]) or 0) then
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  return {1, last[1] and last[1][1] or '', cancel}
end
if st[1] then return {0, st[1], cancel} end
if tostring(st[2]) ~= ARGV[1] then return {-1, '', cancel} end
local id = ''
local first = ''
for i = 10, #ARGV do
  local wanted = '*'
  if i == #ARGV and ARGV[5] ~= '' and ARGV[7] ~= '' then wanted = ARGV[7] end
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], wanted, 'e', ARGV[i])
  if first == '' then first = id end
end
"""
    + _RING
    + """
if ARGV[8] == '1' and redis.call('HSETNX', KEYS[2], 'first_id', first) == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
if seq > 0 then redis.call('HSET', KEYS[2], 'pub_seq', seq) end
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[2], 'status', ARGV[5], 'terminal_id', id)
  if ARGV[6] ~= '' then
    local fields = cjson.decode(ARGV[6])
    for k, v in pairs(fields) do redis.call('HSET', KEYS[2], k, v) end
  end
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
return {1, id, cancel}
"""
)

# A worker starts an attempt. Returns {outcome, attempt, had_output, field, value, ...} (the state hash after
# the claim, so the job needs no second round trip):
# 'missing' (state expired), 'terminal' (already finished, e.g. cancelled while queued), 'ok'.
# ARGV: now.
CLAIM = """
local st = redis.call('HMGET', KEYS[2], 'status', 'terminal_id', 'attempt', 'started_at')
if not st[1] then return {'missing', 0, 0} end
if st[2] then return {'terminal', tonumber(st[3]) or 0, 0} end
local attempt = (tonumber(st[3]) or 0) + 1
redis.call('HSET', KEYS[2], 'attempt', attempt, 'status', 'running', 'pub_seq', 0)
if not st[4] then redis.call('HSET', KEYS[2], 'started_at', ARGV[1]) end
local result = {'ok', attempt, redis.call('XLEN', KEYS[1])}
for _, v in ipairs(redis.call('HGETALL', KEYS[2])) do table.insert(result, v) end
return result
"""

# A worker takes an arq job: arq's in-progress key, set as the job's short lease (worker/pickup.py; arq's own
# start_jobs takes four round trips). KEYS: in-progress key, queue. ARGV: job id, now (ms), lease (ms).
# Returns the job's score, or false if it runs elsewhere, already finished, or is deferred to later.
TAKE_JOB = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return false end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[3])
return score
"""

# TAKE_JOB, then CLAIM, in one round trip (queue and streams on one Redis). KEYS: events, state (CLAIM's),
# in-progress key, queue. ARGV: now (s, CLAIM's), job id, now (ms), lease (ms). Returns false if the job is not
# to be taken, else {score, CLAIM's reply...}.
TAKE_AND_CLAIM = (
    _function("take", TAKE_JOB)
    + _function("claim", CLAIM)
    + """
local score = take({KEYS[3], KEYS[4]}, {ARGV[2], ARGV[3], ARGV[4]})
if not score then return false end
local reply = claim({KEYS[1], KEYS[2]}, {ARGV[1]})
table.insert(reply, 1, score)
return reply
"""
)

# A caller cancels. Queued: the terminal event is written here, so the provider is never called.
# Running: a flag the worker polls; the worker writes the terminal event and closes the upstream request.
# ARGV: maxlen, finished_ttl, event_json, now. Returns {outcome, status}.
CANCEL = (
    """
local st = redis.call('HMGET', KEYS[2], 'status', 'terminal_id')
if not st[1] then return {'missing', ''} end
if st[2] then return {'finished', st[1]} end
if st[1] == 'queued' then
  local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[3])
"""
    + _RING
    + """
  redis.call('HSETNX', KEYS[2], 'first_id', id)
  redis.call('HSET', KEYS[2], 'status', 'cancelled', 'terminal_id', id, 'finished_at', ARGV[4],
    'error_code', 'cancelled', 'cancel', '1')
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  return {'cancelled', 'cancelled'}
end
redis.call('HSET', KEYS[2], 'cancel', '1')
return {'cancelling', st[1]}
"""
)

# Wake one worker after a job was enqueued (on its own when queue and streams are on different servers).
# ARGV: wake_max, job id (the woken worker starts that job without looking through the queue first).
WAKE = """
redis.call('LPUSH', KEYS[1], ARGV[2])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[1]) - 1)
redis.call('EXPIRE', KEYS[1], 60)
return 1
"""

# Admit a new generation for a caller under its concurrency limit. Entries carry a deadline as score, so a
# generation whose release was lost (a crash) stops counting by itself.
# KEYS: the caller's active zset. ARGV: now, deadline, generation id, limit, ttl. Returns 1 admitted, 0 refused.
ADMIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

# Create a generation's state hash with its TTL, in one step (a script, not MULTI: a Redis Cluster client has
# no transactions, and a script's keys in one slot are just as atomic). KEYS: state. ARGV: ttl, field, value...
CREATE = """
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# Admit, create a generation and enqueue its arq job in one round trip (queue and streams on the same Redis).
# KEYS: state hash, arq job key, arq result key, arq queue (zset), wake list, the caller's active zset.
# ARGV: live_ttl, job_ttl_ms, serialized job, score, job id, wake_max, then ADMIT's now, deadline, limit,
#       ttl, then state field/value pairs.
# Returns 1, 0 if a job with that id exists (nothing written), -1 if the caller is at its limit (nothing
# written). Mirrors arq's enqueue_job.
CREATE_AND_ENQUEUE = (
    _function("admit", ADMIT)
    + _function("create", CREATE)
    + _function("wake", WAKE)
    + """
if redis.call('EXISTS', KEYS[2], KEYS[3]) > 0 then return 0 end
if admit({KEYS[6]}, {ARGV[7], ARGV[8], ARGV[5], ARGV[9], ARGV[10]}) == 0 then return -1 end
create({KEYS[1]}, {ARGV[1], unpack(ARGV, 11)})
redis.call('PSETEX', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[5])
wake({KEYS[5]}, {ARGV[6], ARGV[5]})
return 1
"""
)

# The id a worker gives its terminal event (the durable record carries it before the event is written): after
# every entry of the stream, from Redis's clock, so a worker whose clock lags Redis's still writes after the
# entries of earlier attempts. KEYS[1] = the events stream. Returns {seconds, microseconds, last entry id or ''}.
NEXT_ID_BASIS = """
local now = redis.call('TIME')
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
return {now[1], now[2], last[1] and last[1][1] or ''}
"""

# The reaper ends a generation whose arq job is gone (deleted after its tries ran out, or expired) with
# error{worker_lost}. Refuses if it has ended meanwhile, if a worker claimed it since the reaper looked
# (attempt moved), or if it is younger than the grace: its age comes from the state hash's TTL, set once at
# creation (no clock but Redis's). KEYS: events, state. ARGV: attempt seen, maxlen, finished_ttl, event_json,
# the state's largest remaining TTL (ms) for a generation old enough to reap.
# Returns {'ended', id}, {'finished', terminal id}, {'moved', ''}, {'young', ''} or {'missing', ''}.
REAP = (
    """
local st = redis.call('HMGET', KEYS[2], 'status', 'terminal_id', 'attempt')
if not st[1] then return {'missing', ''} end
if st[2] then return {'finished', st[2]} end
if tostring(st[3] or '0') ~= ARGV[1] then return {'moved', ''} end
if redis.call('PTTL', KEYS[2]) > tonumber(ARGV[5]) then return {'young', ''} end
local now = redis.call('TIME')
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[4])
"""
    + _RING
    + """
redis.call('HSETNX', KEYS[2], 'first_id', id)
redis.call('HSET', KEYS[2], 'status', 'error', 'terminal_id', id, 'error_code', 'worker_lost',
  'finished_at', now[1] .. '.' .. string.format('%06d', tonumber(now[2])))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {'ended', id}
"""
)
