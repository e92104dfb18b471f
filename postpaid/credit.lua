-- Set a postpaid account's credit limit and the overdue amount it carries (both
-- absolute, so running it again changes nothing): the headroom moves by the difference.
--
-- KEYS[1] account hash      {a:ID}
--
-- ARGV CreditArgs (postpaid/scripts.py), in this order:
--   credit_limit        micros, '' keep
--   overdue             micros, '' keep
--
-- Reply: {'DONE', balance} or {'UNKNOWN'} (not a postpaid account)

local credit_limit = ARGV[1]
local overdue = ARGV[2]

local acct = redis.call('HMGET', KEYS[1], 'balance', 'credit_limit', 'overdue', 'bp')
if not acct[4] then return {'UNKNOWN'} end
local limit_was, overdue_was = tonumber(acct[2]), tonumber(acct[3] or '0')
local new_limit = credit_limit ~= '' and tonumber(credit_limit) or limit_was
local new_overdue = overdue ~= '' and tonumber(overdue) or overdue_was
local balance = tonumber(acct[1]) + (new_limit - limit_was) - (new_overdue - overdue_was)
redis.call('HSET', KEYS[1], 'balance', string.format('%d', balance), 'credit_limit', string.format('%d', new_limit),
  'overdue', string.format('%d', new_overdue))
-- Headroom came back: the 80 % / 100 % notices may fire again on the next crossing.
local used = new_limit - balance
if used * 10 < new_limit * 8 then redis.call('HSET', KEYS[1], 'cl', '0') end
return {'DONE', string.format('%d', balance)}
