-- Release the reservations of sessions whose supervision time has passed, and record
-- the account's buckets that have expired. (ledger_lib.lua is prepended.)
--
-- KEYS[1] account hash      {a:ID}
-- KEYS[2] open sessions     {a:ID}:sx
-- KEYS[3] buckets           {a:ID}:bk
-- KEYS[4] outbox            {a:ID}:out
-- KEYS[5..7] for a pool member only: the pool's buckets, account hash and outbox
--
-- ARGV SweepArgs (charging/script_args.py), in this order:
--   now_ms              now (ms)
--   session_prefix      session key prefix {a:ID}:s:
--   limit               most sessions to release
--
-- Reply: {released sessions, released money (micros), outbox length after pushes (0: none),
--         next time to look (ms): the next session deadline or bucket expiry, 0 when none}
-- Each released session's reserved money and bucket units go back exactly.

local now_ms = tonumber(ARGV[1])
local session_prefix = ARGV[2]
local limit = tonumber(ARGV[3])

local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms, 'LIMIT', 0, limit)
local money = 0
local pool = nil
if KEYS[5] then pool = {KEYS[5], KEYS[6], KEYS[7]} end
local ever_bought = redis.call('HEXISTS', KEYS[1], 'bucket_seq') == 1
local buckets = load_buckets({KEYS[3], KEYS[1], KEYS[4]}, pool, ever_bought)
for _, sid in ipairs(due) do
  local flat = redis.call('HGETALL', session_prefix .. sid)
  for i = 1, #flat, 2 do
    local kind = string.sub(flat[i], 1, 1)
    if kind == 'm' then
      money = money + tonumber(flat[i + 1])
    elseif kind == 'b' and flat[i + 1] ~= '' then
      release(buckets, flat[i + 1])
    end
  end
  redis.call('DEL', session_prefix .. sid)
  redis.call('ZREM', KEYS[2], sid)
end
if money ~= 0 then
  redis.call('HINCRBY', KEYS[1], 'reserved', fmt(-money))
end
local now_s = floor_div(now_ms, 1000)
save_buckets(buckets, now_s, now_ms)
local next_look = 0
local next_due = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if next_due[2] then next_look = tonumber(next_due[2]) end
for _, b in pairs(buckets) do
  -- Own buckets only: the pool's expiries are looked after through the pool account.
  if b.home[1] == KEYS[3] and (b.expiry > now_s or b.reserved > 0) then
    local at = b.expiry * 1000
    if b.expiry <= now_s then at = now_ms + 60000 end  -- expired but still reserved: look again soon
    if next_look == 0 or at < next_look then next_look = at end
  end
end
return {#due, fmt(money), fmt(pushed), fmt(next_look)}
