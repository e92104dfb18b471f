-- An invoice whose delivery failed for a reason that may pass (the mail server is down),
-- if Redis still holds its state: a settled invoice's state left Redis
-- (postpaid/settled.py), and this does not make it again (a pass that delivered an invoice
-- another pass had delivered and dropped meanwhile). Counts the attempt; below the most
-- attempts the number goes to the back of the queue, at the most it is recorded FAILED,
-- leaves the queue and becomes a candidate to leave Redis. Without a state the number
-- leaves the queue and nothing else is written.
--
-- KEYS[1] invoice state     TAG:is:NUMBER
-- KEYS[2] delivery queue    TAG:deliver
-- KEYS[3] settled invoices  TAG:settled
-- (TAG: the hash tag of the invoice's shard, postpaid/keys.py: every key is in its slot)
--
-- ARGV RedeliverArgs (postpaid/scripts.py), in this order:
--   number              the invoice number
--   max_attempts        the attempts after which it is recorded FAILED
--
-- Reply: 'AGAIN' (queued again) | 'FAILED' (left the queue) | 'GONE' (no state)

local number = ARGV[1]
local max_attempts = tonumber(ARGV[2])

if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('LREM', KEYS[2], 0, number)
  return 'GONE'
end
local attempts = redis.call('HINCRBY', KEYS[1], 'delivery_attempts', 1)
redis.call('LREM', KEYS[2], 1, number)
if attempts < max_attempts then
  redis.call('RPUSH', KEYS[2], number)
  return 'AGAIN'
end
redis.call('HSET', KEYS[1], 'delivery', 'FAILED')
redis.call('SADD', KEYS[3], number)
return 'FAILED'
