-- A prepaid line was terminated: record its remaining money balance, once, and apply the
-- termination policy (FORFEIT: the balance goes to 0; REFUND_ON_REQUEST: it stays).
--
-- KEYS[1] account hash      {a:ID}
--
-- ARGV PrepaidCloseArgs (postpaid/scripts.py), in this order:
--   policy              FORFEIT or REFUND_ON_REQUEST
--   at_s                when the line was terminated (s)
--
-- Reply: {'DONE', closing balance} or {'ALREADY', closing balance} or {'UNKNOWN'}

local policy = ARGV[1]
local at_s = ARGV[2]

local acct = redis.call('HMGET', KEYS[1], 'balance', 'closing_balance')
if not acct[1] then return {'UNKNOWN'} end
if acct[2] then return {'ALREADY', acct[2]} end
redis.call('HSET', KEYS[1], 'closing_balance', acct[1], 'closed_at', at_s, 'closing_policy', policy)
if policy == 'FORFEIT' and tonumber(acct[1]) > 0 then redis.call('HSET', KEYS[1], 'balance', '0') end
return {'DONE', acct[1]}
