-- Drop invoiced usage from a charging account: every period up to the one billed (period ids
-- compare as text), wherever it stands in the records list. Run again: nothing.
--
-- KEYS[1] usage aggregates  {a:ID}:u       KEYS[2] usage records  {a:ID}:ud
--
-- ARGV PurgeArgs (postpaid/scripts.py):
--   period              the period billed
--
-- Reply: records removed

local period = ARGV[1]

local gone = {}
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, string.find(f, '|', 1, true) - 1) <= period then gone[#gone + 1] = f end
end
if #gone > 0 then redis.call('HDEL', KEYS[1], unpack(gone)) end

local all = redis.call('LRANGE', KEYS[2], 0, -1)
local keep = {}
for _, r in ipairs(all) do
  if string.sub(r, 1, string.find(r, ',', 1, true) - 1) > period then keep[#keep + 1] = r end
end
local removed = #all - #keep
if removed > 0 then
  redis.call('DEL', KEYS[2])
  for i = 1, #keep, 1000 do
    redis.call('RPUSH', KEYS[2], unpack(keep, i, math.min(i + 999, #keep)))
  end
end
return removed
