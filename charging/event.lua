-- Event-based charging: one debit, refund, balance check or price enquiry, atomically.
-- (ledger_lib.lua is prepended.)
--
-- KEYS[1] account hash      {a:ID}
-- KEYS[2] answer            {a:ID}:e:EVENT   (debits and refunds only)
-- KEYS[3] buckets           {a:ID}:bk
-- KEYS[4] outbox            {a:ID}:out
-- KEYS[5..7] for a pool member only: the pool's buckets, account hash and outbox
-- ARGV[1] action: D (direct debit), R (refund), C (check balance), P (price enquiry)
-- ARGV[2] payload digest    ARGV[3] identity field   ARGV[4] identity value
-- ARGV[5] plan id the event was rated with            ARGV[6] units
-- ARGV[7] answer ttl (s)    ARGV[8] largest balance allowed
-- ARGV[9] rate              ARGV[10] unit, ARGV[11] service, ARGV[12] zone, ARGV[13] band
-- ARGV[14] now (ms)         ARGV[15] low balance threshold (micros, 0: none)
-- ARGV[16] refund amount (micros)
-- ARGV[17] direction: O (originated by the subscriber) or T (terminating, incoming)
-- ARGV[18] roaming ('R' or '')   ARGV[19] destination ('' none)   ARGV[20] event id
--
-- A postpaid account (with 'bp') records debits and refunds in its bill period
-- (ledger_lib.lua record_usage) and is watched against its credit limit.
--
-- A debit is covered by matching unit buckets first, the rest by money, all or nothing.
-- A refund credits money.
--
-- Reply, one of:
--   {'DONE', body, outbox length after this script's pushes (0: none)}
--        body = "<result code> <balance micros> <available micros> <money charged micros>"
--   {'REPLAY', body}   the event id was applied before with the same payload
--   {'CONFLICT'}       the event id was used before with another payload
--   {'UNKNOWN'}        no such account, or the identity is not on it
--   {'PLAN', id}       the account's plan differs from ARGV[5]: re-rate and retry
--   {'LIMIT'}          a refund would take the balance past ARGV[8]: nothing changed

local action = ARGV[1]
local writes = action == 'D' or action == 'R'
local acct = redis.call('HMGET', KEYS[1], 'balance', 'reserved', 'plan', 'status', ARGV[3], 'low', 'bucket_seq',
  'bp', 'credit_limit', 'cl')
if writes then
  local stored = stored_answer(KEYS[2], ARGV[2])
  if stored then
    -- The caller rebuilds the answer with the plan's rate: make sure it has the plan.
    if acct[1] and acct[3] ~= ARGV[5] then return {'PLAN', acct[3]} end
    return stored
  end
end

if not acct[1] or acct[5] ~= ARGV[4] then return {'UNKNOWN'} end
if acct[3] ~= ARGV[5] then return {'PLAN', acct[3]} end

local home = {KEYS[3], KEYS[1], KEYS[4]}
local pool = nil
if KEYS[5] then pool = {KEYS[5], KEYS[6], KEYS[7]} end
local balance = tonumber(acct[1])
local reserved = tonumber(acct[2])
local units = tonumber(ARGV[6])
local now = tonumber(ARGV[14])
local now_s = floor_div(now, 1000)
local rc = 2001
local charged = 0
local buckets = nil

if action == 'D' or action == 'C' then
  local r = parse_rate(ARGV[9])
  buckets = load_buckets(home, pool, acct[7])
  local usable = matching(buckets, now_s, ARGV[10], ARGV[11], ARGV[12], ARGV[13])
  local need = billable(r, units)
  local from_buckets = 0
  for _, b in ipairs(usable) do from_buckets = from_buckets + math.max(b.amount - b.reserved, 0) end
  if from_buckets > need then from_buckets = need end
  charged = session_cost(r, need - from_buckets)
  local status = acct[4]
  if not (status == 'active' or (status == 'barred_outgoing' and ARGV[17] == 'T')) then
    rc = 4010
  elseif balance - reserved < charged then
    rc = 4012
  elseif action == 'D' then
    consume(usable, from_buckets)
    balance = balance - charged
  end
  if action == 'C' then buckets = nil end
elseif action == 'R' then
  local amount = tonumber(ARGV[16])
  if balance + amount > tonumber(ARGV[8]) then return {'LIMIT'} end
  balance = balance + amount
  charged = -amount
end

local body = string.format('%d %d %d %d', rc, balance, balance - reserved, charged)
if writes then
  if rc == 2001 then
    redis.call('HSET', KEYS[1], 'balance', fmt(balance))
    if buckets then save_buckets(buckets, now_s, now) end
    if acct[8] then
      local sign = (action == 'R') and -1 or 1
      record_usage(KEYS[1], acct[8], now_s, now, {service = ARGV[11], zone = ARGV[12], band = ARGV[13],
        roaming = ARGV[18], destination = ARGV[19], units = sign * units, cost = charged, ref = ARGV[20]})
      watch_credit(KEYS[1], KEYS[4], tonumber(acct[9] or '0'), tonumber(acct[10] or '0'), balance, now)
    else
      watch_balance(KEYS[1], KEYS[4], acct[6] == '1', balance, tonumber(ARGV[15]), now)
    end
  end
  redis.call('SET', KEYS[2], ARGV[2] .. '|' .. body, 'EX', ARGV[7])
end
return {'DONE', body, fmt(pushed)}
