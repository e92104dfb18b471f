-- Drop a closed and invoiced period's usage from a charging account (run again: nothing).
--
-- KEYS[1] usage aggregates  {a:ID}:u       KEYS[2] usage records  {a:ID}:ud
-- ARGV[1] the period
-- Records are appended in time order, so the period's records are at the head.
-- Reply: records removed

local prefix = ARGV[1] .. '|'
local gone = {}
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, #prefix) == prefix then gone[#gone + 1] = f end
end
if #gone > 0 then redis.call('HDEL', KEYS[1], unpack(gone)) end
local rec = ARGV[1] .. ','
local removed = 0
while true do
  local head = redis.call('LRANGE', KEYS[2], 0, 99)
  if #head == 0 then break end
  local n = 0
  for _, r in ipairs(head) do
    if string.sub(r, 1, #rec) ~= rec then break end
    n = n + 1
  end
  if n == 0 then break end
  redis.call('LTRIM', KEYS[2], n, -1)
  removed = removed + n
  if n < #head then break end
end
return removed
