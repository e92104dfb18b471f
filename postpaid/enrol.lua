-- Make a charging account postpaid: its balance becomes headroom against a credit limit.
--
-- KEYS[1] account hash      {a:ID}
-- ARGV[1] open bill periods "id:end s|id:end s|id:end s" (postpaid/periods.py)
-- ARGV[2] credit limit (micros)
--
-- The money balance the account held (prepaid credit, usually 0) is kept on top of the
-- limit. Enrolling again changes nothing.
-- Reply: {'ENROLLED', balance} or {'ALREADY', balance}, or {'UNKNOWN'} (no such account)

local acct = redis.call('HMGET', KEYS[1], 'balance', 'bp')
if not acct[1] then return {'UNKNOWN'} end
if acct[2] then return {'ALREADY', acct[1]} end
local balance = tonumber(acct[1]) + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'bp', ARGV[1], 'credit_limit', ARGV[2], 'overdue', '0', 'cl', '0',
  'balance', string.format('%d', balance))
return {'ENROLLED', string.format('%d', balance)}
