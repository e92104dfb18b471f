-- An index of accounts due for a look at some time: the sweeper's (sessions to
-- supervise, {sweep}:*) and the renewer's (recurring bundles, {renew}:*).
--
-- KEYS[1] ...:due    zset account id -> time to look (ms)
-- KEYS[2] ...:epoch  hash account id -> count of hints
--
-- ARGV[1] the operation (the record's OP), then that record's fields
-- (charging/script_args.py), in this order:
-- ARGV DueHint, OP hint: look no later than the deadline. Reply: 1.
--   account
--   deadline_ms
-- ARGV DueTake, OP take: the accounts due now, each leased (pushed to now + lease) so
-- concurrent sweepers do not share work. Reply: {account, epoch, due ms, ...}.
--   now_ms
--   lease_ms
--   limit
-- ARGV DueSettle, OP settle: reschedule, or forget the account when nothing is open and
-- no hint arrived since the take. Reply: 1.
--   account
--   epoch               the account's epoch seen at take
--   next_ms             next deadline, or 0 (nothing open)

local op = ARGV[1]
local account, deadline_ms, now_ms, lease_ms, limit, epoch, next_ms
if op == 'hint' then
  account, deadline_ms = ARGV[2], ARGV[3]
elseif op == 'take' then
  now_ms, lease_ms, limit = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
elseif op == 'settle' then
  account, epoch, next_ms = ARGV[2], ARGV[3], ARGV[4]
end

if op == 'hint' then
  redis.call('ZADD', KEYS[1], 'LT', deadline_ms, account)
  redis.call('HINCRBY', KEYS[2], account, 1)
  return 1
elseif op == 'take' then
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, limit)
  local out = {}
  local lease = tonumber(now_ms) + lease_ms
  for _, taken in ipairs(due) do
    local score = redis.call('ZSCORE', KEYS[1], taken)
    redis.call('ZADD', KEYS[1], lease, taken)
    out[#out + 1] = taken
    out[#out + 1] = redis.call('HGET', KEYS[2], taken) or '0'
    out[#out + 1] = score
  end
  return out
elseif op == 'settle' then
  local unchanged = (redis.call('HGET', KEYS[2], account) or '0') == epoch
  if next_ms == '0' then
    if unchanged then
      redis.call('ZREM', KEYS[1], account)
      redis.call('HDEL', KEYS[2], account)
    end
  elseif unchanged then
    redis.call('ZADD', KEYS[1], next_ms, account)
  else
    redis.call('ZADD', KEYS[1], 'LT', next_ms, account)
  end
  return 1
end
return redis.error_reply('unknown operation ' .. tostring(op))
