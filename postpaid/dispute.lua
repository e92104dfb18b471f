-- Open or reject a dispute on an invoice: the disputed amount is held out of dunning.
--
-- KEYS[1] dispute record    TAG:disp:ID
-- KEYS[2] invoice state     TAG:is:NUMBER
-- KEYS[3] settled invoices  TAG:settled (a hold released on an invoice with nothing open:
--                           its state may go, postpaid/settled.py)
-- (TAG: the hash tag of the account's shard, postpaid/keys.py: every key is in its slot)
--
-- ARGV DisputeArgs (postpaid/scripts.py), in this order:
--   op                  OPEN, ACCEPT, REJECT or RELEASE
--   amount              minor units
--   record              the dispute record JSON
--
-- RELEASE lifts an accepted dispute's hold when there was nothing left to credit.
--
-- ACCEPT decides the dispute (its credit note follows, idempotent, and releases the hold);
-- REJECT releases the hold. Whichever of the two comes first decides: the other is CLOSED.
--
-- Reply: {'DONE'} | {'SAME'} (already in that state) | {'TOOMUCH', open undisputed}
--        | {'NOINVOICE'} | {'NODISPUTE'} | {'CLOSED', status}

local op = ARGV[1]
local amount = ARGV[2]
local record = ARGV[3]

local prev = redis.call('HGET', KEYS[1], 'status')
local function released()
  if redis.call('HGET', KEYS[2], 'open') == '0' then
    redis.call('SADD', KEYS[3], string.sub(KEYS[2], select(2, string.find(KEYS[2], '}:is:', 1, true)) + 1))
  end
end
if op == 'RELEASE' then
  if prev ~= 'ACCEPTED' or redis.call('HGET', KEYS[1], 'released') then return {'SAME'} end
  local disputed = tonumber(redis.call('HGET', KEYS[2], 'disputed'))
  redis.call('HSET', KEYS[2], 'disputed', string.format('%d', math.max(disputed - tonumber(amount), 0)))
  redis.call('HSET', KEYS[1], 'released', '1')
  released()
  return {'DONE'}
end
if op == 'OPEN' then
  if prev then return {'SAME'} end
  local inv = redis.call('HMGET', KEYS[2], 'open', 'disputed')
  if not inv[1] then return {'NOINVOICE'} end
  local free = tonumber(inv[1]) - tonumber(inv[2])
  if tonumber(amount) > free then return {'TOOMUCH', string.format('%d', free)} end
  redis.call('HINCRBY', KEYS[2], 'disputed', amount)
  redis.call('HSET', KEYS[1], 'status', 'OPEN', 'doc', record)
  return {'DONE'}
end
if not prev then return {'NODISPUTE'} end
local target = (op == 'ACCEPT') and 'ACCEPTED' or 'REJECTED'
if prev == target then return {'SAME'} end
if prev ~= 'OPEN' then return {'CLOSED', prev} end
if op == 'REJECT' then
  local disputed = tonumber(redis.call('HGET', KEYS[2], 'disputed'))
  redis.call('HSET', KEYS[2], 'disputed', string.format('%d', math.max(disputed - tonumber(amount), 0)))
  released()
end
redis.call('HSET', KEYS[1], 'status', target, 'doc', record)
return {'DONE'}
