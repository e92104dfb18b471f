-- A prepaid line was terminated: record its remaining money balance, once, and apply the
-- termination policy (FORFEIT: the balance goes to 0; REFUND_ON_REQUEST: it stays). Its
-- audit entry goes to the account's record outbox in this script (charging/cdrs.py 'x'
-- layout), so the closure and its entry are never one without the other.
--
-- KEYS[1] account hash      {a:ID}
-- KEYS[2] record outbox     {a:ID}:cdr
--
-- ARGV PrepaidCloseArgs (postpaid/scripts.py), in this order:
--   policy              FORFEIT or REFUND_ON_REQUEST
--   at_s                when the line was terminated (s)
--   actor               who terminated it, for the audit entry
--
-- Reply: {'DONE', closing balance} or {'ALREADY', closing balance} or {'UNKNOWN'}

local policy = ARGV[1]
local at_s = ARGV[2]
local actor = ARGV[3]

local acct = redis.call('HMGET', KEYS[1], 'balance', 'closing_balance')
if not acct[1] then return {'UNKNOWN'} end
if acct[2] then return {'ALREADY', acct[2]} end
local forfeited = '0'
redis.call('HSET', KEYS[1], 'closing_balance', acct[1], 'closed_at', at_s, 'closing_policy', policy)
if policy == 'FORFEIT' and tonumber(acct[1]) > 0 then
  redis.call('HSET', KEYS[1], 'balance', '0')
  forfeited = acct[1]
end
local details = cjson.encode({policy = policy, closing_balance_micros = acct[1], forfeited_micros = forfeited})
redis.call('RPUSH', KEYS[2], cjson.encode({'x', at_s .. '000', actor, 'prepaid_closed', 'prepaid_closed', details}))
return {'DONE', acct[1]}
