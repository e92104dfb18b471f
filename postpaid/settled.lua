-- A settled invoice's state leaves Redis (postpaid/settled.py). CHECK tells whether the
-- invoice is settled as Redis sees it: nothing open, nothing disputed, not queued for
-- delivery; a candidate that is not (or whose state is gone) leaves the candidates' set,
-- atomically with the check, since the scripts that change what was checked add it
-- again (pay.lua and settle.lua when nothing is left open, dispute.lua when a hold is
-- released, the delivery pass when the invoice leaves its queue). DROP deletes the state
-- (with the records of the invoice's closed disputes and its members of the account's
-- dunning steps) once PostgreSQL answers for the invoice (its settled_invoices row is
-- committed): no dunning decision of the account waits to be applied then, and none is
-- made again for an invoice with nothing open.
--
-- KEYS[1] invoice state     TAG:is:NUMBER
-- KEYS[2] delivery queue    TAG:deliver
-- KEYS[3] settled invoices  TAG:settled
-- KEYS[4] DROP: the account's dunning steps TAG:ba:BA:dun
-- KEYS[5..] DROP: the invoice's dispute records TAG:disp:ID
-- (TAG: the hash tag of the account's shard, postpaid/keys.py: every key is in its slot)
--
-- ARGV SettledArgs (postpaid/scripts.py), in this order:
--   op                  CHECK or DROP
--   number              the invoice number
--   members             DROP: the invoice's members of KEYS[4] (the rest of ARGV)
--
-- Reply: {'READY', ba, status, delivery, delivered_on, delivery_detail} | {'GONE'}
--        | {'BUSY'} (CHECK) | {'DROPPED'}

local op = ARGV[1]
local number = ARGV[2]
local members = {unpack(ARGV, 3)}

if op == 'DROP' then
  redis.call('DEL', KEYS[1])
  for i = 5, #KEYS do redis.call('DEL', KEYS[i]) end
  for _, member in ipairs(members) do redis.call('SREM', KEYS[4], member) end
  redis.call('SREM', KEYS[3], number)
  return {'DROPPED'}
end
local h = redis.call('HMGET', KEYS[1], 'ba', 'open', 'disputed', 'status', 'delivery', 'delivered_on',
  'delivery_detail')
if not h[1] then
  redis.call('SREM', KEYS[3], number)
  return {'GONE'}
end
if h[2] ~= '0' or (h[3] or '0') ~= '0' or redis.call('LPOS', KEYS[2], number) then
  redis.call('SREM', KEYS[3], number)
  return {'BUSY'}
end
return {'READY', h[1], h[4] or 'PAID', h[5] or 'PENDING', h[6] or '', h[7] or ''}
