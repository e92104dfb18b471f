-- Event-based charging: one debit, refund, balance check or price enquiry, atomically.
-- (ledger_lib.lua is prepended.)
--
-- KEYS[1] account hash      {a:ID}
-- KEYS[2] answer            {a:ID}:e:EVENT   (debits and refunds only)
-- KEYS[3] buckets           {a:ID}:bk
-- KEYS[4] outbox            {a:ID}:out
-- KEYS[5] usage aggregates  {a:ID}:u       KEYS[6] usage records  {a:ID}:ud  (postpaid)
-- KEYS[7..9] for a pool member only: the pool's buckets, account hash and outbox
--
-- ARGV EventArgs (charging/script_args.py), in this order:
--   action              D (direct debit), R (refund), C (check balance), P (price enquiry)
--   digest              payload digest
--   identity_field      msisdn or imsi
--   identity_value
--   plan_id             the plan the event was rated with
--   units
--   answer_ttl_s        how long the answer is kept (debits and refunds)
--   max_balance         largest balance allowed (micros)
--   rate
--   unit                unit, service, zone and band, for bucket matching
--   service
--   zone
--   band
--   now_ms              now (ms)
--   low_balance_micros  low balance threshold (0: none)
--   amount              refund amount (micros)
--   terminating         O (originated by the subscriber) or T (terminating, incoming)
--   roaming             'R' or ''
--   destination         '' none
--   event_id
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
--   {'PLAN', id}       the account's plan differs from plan_id: re-rate and retry
--   {'LIMIT'}          a refund would take the balance past max_balance: nothing changed

local action = ARGV[1]
local digest = ARGV[2]
local identity_field = ARGV[3]
local identity_value = ARGV[4]
local plan_id = ARGV[5]
local units = tonumber(ARGV[6])
local answer_ttl_s = ARGV[7]
local max_balance = tonumber(ARGV[8])
local rate = ARGV[9]
local unit = ARGV[10]
local service = ARGV[11]
local zone = ARGV[12]
local band = ARGV[13]
local now_ms = tonumber(ARGV[14])
local low_balance_micros = tonumber(ARGV[15])
local amount = tonumber(ARGV[16])
local terminating = ARGV[17] == 'T'
local roaming = ARGV[18]
local destination = ARGV[19]
local event_id = ARGV[20]

local writes = action == 'D' or action == 'R'
local acct = redis.call('HMGET', KEYS[1], 'balance', 'reserved', 'plan', 'status', identity_field, 'low', 'bucket_seq',
  'bp', 'credit_limit', 'cl')
if writes then
  local stored = stored_answer(KEYS[2], digest)
  if stored then
    -- The caller rebuilds the answer with the plan's rate: make sure it has the plan.
    if acct[1] and acct[3] ~= plan_id then return {'PLAN', acct[3]} end
    return stored
  end
end

if not acct[1] or acct[5] ~= identity_value then return {'UNKNOWN'} end
if acct[3] ~= plan_id then return {'PLAN', acct[3]} end

local home = {KEYS[3], KEYS[1], KEYS[4]}
local pool = nil
if KEYS[7] then pool = {KEYS[7], KEYS[8], KEYS[9]} end
local balance = tonumber(acct[1])
local reserved = tonumber(acct[2])
local now_s = floor_div(now_ms, 1000)
local rc = 2001
local charged = 0
local buckets = nil

if action == 'D' or action == 'C' then
  local r = parse_rate(rate)
  buckets = load_buckets(home, pool, acct[7])
  local usable = matching(buckets, now_s, unit, service, zone, band)
  local need = billable(r, units)
  local from_buckets = 0
  for _, b in ipairs(usable) do from_buckets = from_buckets + math.max(b.amount - b.reserved, 0) end
  if from_buckets > need then from_buckets = need end
  charged = session_cost(r, need - from_buckets)
  local status = acct[4]
  if not (status == 'active' or (status == 'barred_outgoing' and terminating)) then
    rc = 4010
  elseif balance - reserved < charged then
    rc = 4012
  elseif action == 'D' then
    consume(usable, from_buckets)
    balance = balance - charged
  end
  if action == 'C' then buckets = nil end
elseif action == 'R' then
  if balance + amount > max_balance then return {'LIMIT'} end
  balance = balance + amount
  charged = -amount
end

local body = string.format('%d %d %d %d', rc, balance, balance - reserved, charged)
if writes then
  if rc == 2001 then
    redis.call('HSET', KEYS[1], 'balance', fmt(balance))
    if buckets then save_buckets(buckets, now_s, now_ms) end
    if acct[8] then
      local sign = (action == 'R') and -1 or 1
      record_usage(KEYS[5], KEYS[6], acct[8], now_s, now_ms, {service = service, zone = zone, band = band,
        roaming = roaming, destination = destination, units = sign * units, cost = charged, ref = event_id})
      watch_credit(KEYS[1], KEYS[4], tonumber(acct[9] or '0'), tonumber(acct[10] or '0'), balance, now_ms)
    else
      watch_balance(KEYS[1], KEYS[4], acct[6] == '1', balance, low_balance_micros, now_ms)
    end
  end
  redis.call('SET', KEYS[2], digest .. '|' .. body, 'EX', answer_ttl_s)
end
return {'DONE', body, fmt(pushed)}
