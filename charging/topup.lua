-- Recharge: credit an account once per idempotency key. (ledger_lib.lua is prepended.)
--
-- KEYS[1] account hash      {a:ID}
-- KEYS[2] answer            {a:ID}:t:KEY
-- KEYS[3] record outbox     {a:ID}:cdr   (the top-up's audit entry, relayed to PostgreSQL)
--
-- ARGV TopupArgs (charging/script_args.py), in this order:
--   digest              payload digest
--   amount              micros, > 0
--   answer_ttl_s        how long the answer is kept
--   max_balance         largest balance allowed (micros)
--   low_balance_micros  low balance threshold: a balance back at or above it may be
--                       notified again the next time it falls below
--   now_ms              now (ms)
--   actor               who asked (charging/security/identity.py caller_name)
--   channel             the top-up channel
--   records             1: append the top-up's audit entry to KEYS[3]
--
-- Reply, one of:
--   {'DONE', body, '0', record outbox length after this script's push (0: none)}
--                      body = "<balance micros> <reserved micros> <currency>"
--   {'REPLAY', body}   this key was applied before with the same payload
--   {'CONFLICT'}       this key was used before with another payload
--   {'UNKNOWN'}        no such account
--   {'LIMIT'}          the balance would pass max_balance: nothing changed
--   {'POSTPAID'}       a postpaid account: its balance is credit headroom, paid by invoice

local digest = ARGV[1]
local amount = tonumber(ARGV[2])
local answer_ttl_s = ARGV[3]
local max_balance = tonumber(ARGV[4])
local low_balance_micros = tonumber(ARGV[5] or '0')
local now_ms = ARGV[6]
local actor = ARGV[7]
local channel = ARGV[8]
local records = ARGV[9] == '1'

local stored = stored_answer(KEYS[2], digest)
if stored then return stored end

local acct = redis.call('HMGET', KEYS[1], 'balance', 'reserved', 'currency', 'bp')
if not acct[1] then return {'UNKNOWN'} end
if acct[4] then return {'POSTPAID'} end
local balance = tonumber(acct[1]) + amount
if balance > max_balance then return {'LIMIT'} end

local body = string.format('%d %s %s', balance, acct[2], acct[3])
redis.call('HSET', KEYS[1], 'balance', string.format('%d', balance))
if balance >= low_balance_micros then redis.call('HDEL', KEYS[1], 'low') end
redis.call('SET', KEYS[2], digest .. '|' .. body, 'EX', answer_ttl_s)
if records then
  push_record(KEYS[3], {'t', now_ms, actor, channel, string.sub(KEYS[2], #KEYS[1] + 4), fmt(amount), fmt(balance)})
end
return {'DONE', body, '0', fmt(recorded)}
