-- Make a charging account postpaid: its balance becomes headroom against a credit limit.
--
-- KEYS[1] account hash      {a:ID}
--
-- ARGV EnrolArgs (postpaid/scripts.py), in this order:
--   periods             open bill periods "id:end s|id:end s|id:end s" (postpaid/periods.py)
--   credit_limit        micros
--
-- The money balance the account held (prepaid credit, usually 0) is kept on top of the
-- limit. Enrolling again changes nothing.
-- Reply: {'ENROLLED', balance} or {'ALREADY', balance}, or {'UNKNOWN'} (no such account)

local periods = ARGV[1]
local credit_limit = ARGV[2]

local acct = redis.call('HMGET', KEYS[1], 'balance', 'bp')
if not acct[1] then return {'UNKNOWN'} end
if acct[2] then return {'ALREADY', acct[1]} end
local balance = tonumber(acct[1]) + tonumber(credit_limit)
redis.call('HSET', KEYS[1], 'bp', periods, 'credit_limit', credit_limit, 'overdue', '0', 'cl', '0',
  'balance', string.format('%d', balance))
return {'ENROLLED', string.format('%d', balance)}
