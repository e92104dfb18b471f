-- Buy a bundle with the money balance, once per idempotency key.
-- (ledger_lib.lua is prepended.)
--
-- KEYS[1] account hash      {a:ID}
-- KEYS[2] answer            {a:ID}:t:KEY
-- KEYS[3] buckets           {a:ID}:bk
-- KEYS[4] outbox            {a:ID}:out
-- KEYS[5] usage aggregates  {a:ID}:u       KEYS[6] usage records  {a:ID}:ud  (postpaid)
-- KEYS[7] record outbox     {a:ID}:cdr   (the sale's record, relayed to PostgreSQL)
--
-- ARGV BuyArgs (charging/script_args.py), in this order:
--   digest              payload digest
--   price               micros
--   answer_ttl_s        how long the answer is kept
--   now_ms              now (ms)
--   low_balance_micros  low balance threshold (0: none)
--   bundle_id
--   currency            the bundle's currency
--   actor               who asked (charging/security/identity.py caller_name)
--   channel             the sales channel
--   records             1: append the sale's record to KEYS[7]
--   buckets             the rest of ARGV: the new buckets in stored form (ids are given
--                       here: <bundle id>.<n>)
--
-- A postpaid account (with 'bp') records the purchase as usage of the service 'bundle'
-- (zone: the bundle id) in its bill period, so it is invoiced, and is watched against its
-- credit limit.
--
-- Reply, one of:
--   {'DONE', body, outbox length after this script's pushes (0: none), record outbox length (0: none)}   body = "<result> <balance micros> <reserved micros> <bucket ids|->"
--        result: OK, FUNDS (the available balance does not cover the price: nothing
--        changed), DENIED (the subscriber is barred), CURRENCY (the account's currency
--        differs from the bundle's)
--   {'REPLAY', body}   this key was applied before with the same payload
--   {'CONFLICT'}       this key was used before with another payload
--   {'UNKNOWN'}        no such account

local digest = ARGV[1]
local price = tonumber(ARGV[2])
local answer_ttl_s = ARGV[3]
local now_ms = tonumber(ARGV[4])
local low_balance_micros = tonumber(ARGV[5])
local bundle_id = ARGV[6]
local currency = ARGV[7]
local actor = ARGV[8]
local channel = ARGV[9]
local records = ARGV[10] == '1'
local buckets = {unpack(ARGV, 11)}

local stored = stored_answer(KEYS[2], digest)
if stored then return stored end

local acct = redis.call('HMGET', KEYS[1], 'balance', 'reserved', 'status', 'currency', 'low', 'bp', 'credit_limit',
  'cl', 'msisdn', 'imsi', 'plan')
if not acct[1] then return {'UNKNOWN'} end
local balance, reserved = tonumber(acct[1]), tonumber(acct[2])
local result, ids = 'OK', {}
if acct[3] ~= 'active' then
  result = 'DENIED'
elseif acct[4] ~= currency then
  result = 'CURRENCY'
elseif balance - reserved < price then
  result = 'FUNDS'
else
  balance = balance - price
  redis.call('HSET', KEYS[1], 'balance', fmt(balance))
  for _, packed in ipairs(buckets) do
    local id = bundle_id .. '.' .. fmt(redis.call('HINCRBY', KEYS[1], 'bucket_seq', 1))
    redis.call('HSET', KEYS[3], id, packed)
    ids[#ids + 1] = id
  end
  if acct[6] then
    -- (a bundle included in a postpaid plan comes at price 0 and is not usage)
    if price > 0 then
      record_usage(KEYS[5], KEYS[6], acct[6], floor_div(now_ms, 1000), now_ms, {service = 'bundle', zone = bundle_id, band = '',
        roaming = '', destination = '', units = 1, cost = price, ref = string.sub(KEYS[2], #KEYS[1] + 4)})
    end
    watch_credit(KEYS[1], KEYS[4], tonumber(acct[7] or '0'), tonumber(acct[8] or '0'), balance, now_ms)
  else
    watch_balance(KEYS[1], KEYS[4], acct[5] == '1', balance, low_balance_micros, now_ms)
  end
end
local listed_ids = '-'
if #ids > 0 then listed_ids = table.concat(ids, '|') end
if result == 'OK' and records then
  push_record(KEYS[7], {'b', fmt(now_ms), acct[9] or '', acct[10] or '', acct[11] or '', actor, channel,
    string.sub(KEYS[2], #KEYS[1] + 4), bundle_id, fmt(price), fmt(balance), listed_ids})
end
local body = result .. ' ' .. fmt(balance) .. ' ' .. fmt(reserved) .. ' ' .. listed_ids
redis.call('SET', KEYS[2], digest .. '|' .. body, 'EX', answer_ttl_s)
return {'DONE', body, fmt(pushed), fmt(recorded)}
