-- Recharge: credit an account once per idempotency key. (ledger_lib.lua is prepended.)
--
-- KEYS[1] account hash      {a:ID}
-- KEYS[2] answer            {a:ID}:t:KEY
-- ARGV[1] payload digest    ARGV[2] amount (micros, > 0)
-- ARGV[3] answer ttl (s)    ARGV[4] largest balance allowed
-- ARGV[5] low balance threshold (micros): a balance back at or above it may be notified
--         again the next time it falls below
--
-- Reply, one of:
--   {'DONE', body}     body = "<balance micros> <reserved micros> <currency>"
--   {'REPLAY', body}   this key was applied before with the same payload
--   {'CONFLICT'}       this key was used before with another payload
--   {'UNKNOWN'}        no such account
--   {'LIMIT'}          the balance would pass ARGV[4]: nothing changed
--   {'POSTPAID'}       a postpaid account: its balance is credit headroom, paid by invoice

local stored = stored_answer(KEYS[2], ARGV[1])
if stored then return stored end

local acct = redis.call('HMGET', KEYS[1], 'balance', 'reserved', 'currency', 'bp')
if not acct[1] then return {'UNKNOWN'} end
if acct[4] then return {'POSTPAID'} end
local balance = tonumber(acct[1]) + tonumber(ARGV[2])
if balance > tonumber(ARGV[4]) then return {'LIMIT'} end

local body = string.format('%d %s %s', balance, acct[2], acct[3])
redis.call('HSET', KEYS[1], 'balance', string.format('%d', balance))
if balance >= tonumber(ARGV[5] or '0') then redis.call('HDEL', KEYS[1], 'low') end
redis.call('SET', KEYS[2], ARGV[1] .. '|' .. body, 'EX', ARGV[3])
return {'DONE', body}
