-- The opening of an account's credit as a row: credit held before revision 0014 (when
-- its movements became rows) is appended to the credit outbox once, as 'opening'. The
-- 'credit_rows' flag makes it once: pay.lua and settle.lua set it (recording the opening
-- themselves) at the account's first credit movement, this at the upgrade's pass.
--
-- KEYS[1] billing account   TAG:ba:BA
-- KEYS[2] credit outbox     TAG:credits
--
-- ARGV CreditOpenArgs (postpaid/scripts.py), in this order:
--   at_s                the upgrade's time (s)
--
-- Reply: 1 when the opening was recorded now (a row when the credit is not 0), else 0.

local at_s = ARGV[1]

if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], 'credit_rows', '1') == 0 then return 0 end
local credit = tonumber(redis.call('HGET', KEYS[1], 'credit') or '0')
if credit > 0 then
  local ba_id = string.sub(KEYS[1], select(2, string.find(KEYS[1], '}:ba:', 1, true)) + 1)
  redis.call('RPUSH', KEYS[2], cjson.encode({movement = 'opening', kind = 'opening', ba = ba_id,
    source = '', invoice = '', amount = string.format('%d', credit), at_s = at_s}))
end
return 1
