-- Release the reservations of sessions whose supervision time has passed.
--
-- KEYS[1] account hash      {a:ID}
-- KEYS[2] open sessions     {a:ID}:sx
-- ARGV[1] now (ms)          ARGV[2] session key prefix {a:ID}:s:   ARGV[3] most sessions to release
--
-- Reply: {released sessions, released money (micros), next deadline ms or 0 when none is open}
-- Each released session's reserved money goes back to the available balance exactly.

local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local money = 0
for _, sid in ipairs(due) do
  local flat = redis.call('HGETALL', ARGV[2] .. sid)
  for i = 1, #flat, 2 do
    if string.sub(flat[i], 1, 1) == 'm' then money = money + tonumber(flat[i + 1]) end
  end
  redis.call('DEL', ARGV[2] .. sid)
  redis.call('ZREM', KEYS[2], sid)
end
if money ~= 0 then
  redis.call('HINCRBY', KEYS[1], 'reserved', string.format('%d', -money))
end
local next_due = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local nd = '0'
if next_due[2] then nd = next_due[2] end
return {#due, string.format('%d', money), nd}
