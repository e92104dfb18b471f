-- Record an invoice's delivery outcome on its state, if Redis still holds it: a settled
-- invoice's state left Redis (postpaid/settled.py), and a delivery made again
-- (ResendInvoice) is then PostgreSQL's alone (its invoice_deliveries rows), so this does
-- not make the state again.
--
-- KEYS[1] invoice state     TAG:is:NUMBER
--
-- ARGV DeliveredArgs (postpaid/scripts.py), in this order:
--   delivery            DELIVERED, RETRYING or FAILED
--   delivery_detail     the failures ('' none)
--   delivered_on        the channels it reached, comma separated
--
-- Reply: 1 recorded, 0 no state

local delivery = ARGV[1]
local delivery_detail = ARGV[2]
local delivered_on = ARGV[3]

if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'delivery', delivery, 'delivery_detail', delivery_detail, 'delivered_on', delivered_on)
return 1
