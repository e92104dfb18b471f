-- Set a postpaid account's credit limit and the overdue amount it carries (both
-- absolute, so running it again changes nothing): the headroom moves by the difference.
--
-- KEYS[1] account hash      {a:ID}
-- ARGV[1] credit limit (micros, '' keep)   ARGV[2] overdue (micros, '' keep)
--
-- Reply: {'DONE', balance} or {'UNKNOWN'} (not a postpaid account)

local acct = redis.call('HMGET', KEYS[1], 'balance', 'credit_limit', 'overdue', 'bp')
if not acct[4] then return {'UNKNOWN'} end
local limit, overdue = tonumber(acct[2]), tonumber(acct[3] or '0')
local new_limit = ARGV[1] ~= '' and tonumber(ARGV[1]) or limit
local new_overdue = ARGV[2] ~= '' and tonumber(ARGV[2]) or overdue
local balance = tonumber(acct[1]) + (new_limit - limit) - (new_overdue - overdue)
redis.call('HSET', KEYS[1], 'balance', string.format('%d', balance), 'credit_limit', string.format('%d', new_limit),
  'overdue', string.format('%d', new_overdue))
-- Headroom came back: the 80 % / 100 % notices may fire again on the next crossing.
local used = new_limit - balance
if used * 10 < new_limit * 8 then redis.call('HSET', KEYS[1], 'cl', '0') end
return {'DONE', string.format('%d', balance)}
