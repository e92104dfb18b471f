-- A prepaid line was terminated: record its remaining money balance, once, and apply the
-- termination policy (FORFEIT: the balance goes to 0; REFUND_ON_REQUEST: it stays).
--
-- KEYS[1] account hash      {a:ID}
-- ARGV[1] policy            ARGV[2] at (s)
--
-- Reply: {'DONE', closing balance} or {'ALREADY', closing balance} or {'UNKNOWN'}

local acct = redis.call('HMGET', KEYS[1], 'balance', 'closing_balance')
if not acct[1] then return {'UNKNOWN'} end
if acct[2] then return {'ALREADY', acct[2]} end
redis.call('HSET', KEYS[1], 'closing_balance', acct[1], 'closed_at', ARGV[2], 'closing_policy', ARGV[1])
if ARGV[1] == 'FORFEIT' and tonumber(acct[1]) > 0 then redis.call('HSET', KEYS[1], 'balance', '0') end
return {'DONE', acct[1]}
