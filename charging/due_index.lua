-- An index of accounts due for a look at some time: the sweeper's (sessions to
-- supervise, {sweep}:*) and the renewer's (recurring bundles, {renew}:*).
--
-- KEYS[1] ...:due    zset account id -> time to look (ms)
-- KEYS[2] ...:epoch  hash account id -> count of hints
-- ARGV[1] operation:
--   hint   ARGV[2] account, ARGV[3] deadline     -> 1. Look no later than the deadline.
--   take   ARGV[2] now, ARGV[3] lease ms, ARGV[4] limit
--                                              -> {account, epoch, due ms, ...} due now; each
--          is leased (pushed to now + lease) so concurrent sweepers do not share work.
--   settle ARGV[2] account, ARGV[3] epoch seen at take, ARGV[4] next deadline or 0
--                                              -> 1. Reschedule, or forget the account
--          when nothing is open and no hint arrived since the take.

local op = ARGV[1]
if op == 'hint' then
  redis.call('ZADD', KEYS[1], 'LT', ARGV[3], ARGV[2])
  redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
  return 1
elseif op == 'take' then
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[4]))
  local out = {}
  local lease = tonumber(ARGV[2]) + tonumber(ARGV[3])
  for _, account in ipairs(due) do
    local score = redis.call('ZSCORE', KEYS[1], account)
    redis.call('ZADD', KEYS[1], lease, account)
    out[#out + 1] = account
    out[#out + 1] = redis.call('HGET', KEYS[2], account) or '0'
    out[#out + 1] = score
  end
  return out
elseif op == 'settle' then
  local account = ARGV[2]
  local unchanged = (redis.call('HGET', KEYS[2], account) or '0') == ARGV[3]
  if ARGV[4] == '0' then
    if unchanged then
      redis.call('ZREM', KEYS[1], account)
      redis.call('HDEL', KEYS[2], account)
    end
  elseif unchanged then
    redis.call('ZADD', KEYS[1], ARGV[4], account)
  else
    redis.call('ZADD', KEYS[1], 'LT', ARGV[4], account)
  end
  return 1
end
return redis.error_reply('unknown operation ' .. tostring(op))
