-- Release the reservations of sessions whose supervision time has passed.
-- (ledger_lib.lua is prepended.)
--
-- KEYS[1] account hash      {a:ID}
-- KEYS[2] open sessions     {a:ID}:sx
-- KEYS[3] buckets           {a:ID}:bk
-- KEYS[4] outbox            {a:ID}:out
-- KEYS[5..7] for a pool member only: the pool's buckets, account hash and outbox
-- ARGV[1] now (ms)          ARGV[2] session key prefix {a:ID}:s:   ARGV[3] most sessions to release
--
-- Reply: {released sessions, released money (micros), next deadline ms or 0 when none is open}
-- Each released session's reserved money and bucket units go back exactly.

local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local money = 0
local buckets = nil
for _, sid in ipairs(due) do
  local flat = redis.call('HGETALL', ARGV[2] .. sid)
  for i = 1, #flat, 2 do
    local kind = string.sub(flat[i], 1, 1)
    if kind == 'm' then
      money = money + tonumber(flat[i + 1])
    elseif kind == 'b' and flat[i + 1] ~= '' then
      local pool = nil
      if KEYS[5] then pool = {KEYS[5], KEYS[6], KEYS[7]} end
      buckets = buckets or load_buckets({KEYS[3], KEYS[1], KEYS[4]}, pool, true)
      release(buckets, flat[i + 1])
    end
  end
  redis.call('DEL', ARGV[2] .. sid)
  redis.call('ZREM', KEYS[2], sid)
end
if money ~= 0 then
  redis.call('HINCRBY', KEYS[1], 'reserved', fmt(-money))
end
if buckets then
  local now = tonumber(ARGV[1])
  save_buckets(buckets, floor_div(now, 1000), now)
end
local next_due = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local nd = '0'
if next_due[2] then nd = next_due[2] end
return {#due, fmt(money), nd}
