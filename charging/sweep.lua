-- Release the reservations of sessions whose supervision time has passed, and record
-- the account's buckets that have expired. (ledger_lib.lua is prepended.)
--
-- KEYS[1] account hash      {a:ID}
-- KEYS[2] open sessions     {a:ID}:sx
-- KEYS[3] buckets           {a:ID}:bk
-- KEYS[4] outbox            {a:ID}:out
-- KEYS[5..4+n] session hash {a:ID}:s:SESSION of each of the n sessions in ARGV
-- KEYS[5+n] record outbox   {a:ID}:cdr     (usage records waiting for the relay to PostgreSQL)
-- KEYS[6+n..8+n] for a pool member only: the pool's buckets, account hash and outbox
--
-- ARGV SweepArgs (charging/script_args.py), in this order:
--   now_ms              now (ms)
--   records             1: append a record per released session to KEYS[5+n]
--   sessions            the rest of ARGV: the ids of the sessions that were due when the
--                       caller looked (at most a batch); one refreshed or ended since is
--                       left alone
--
-- Reply: {released sessions, released money (micros), outbox length after pushes (0: none),
--         next time to look (ms): the next session deadline or bucket expiry, 0 when none,
--         record outbox length after pushes (0: none)}
-- Each released session's reserved money and bucket units go back exactly, and gets a
-- usage record with the cause (layout 'w', charging/cdrs.py) in this same script.

local now_ms = tonumber(ARGV[1])
local records = ARGV[2] == '1'
local sessions = {unpack(ARGV, 3)}

local n = #sessions
local released = 0
local money = 0
local pool = nil
if KEYS[6 + n] then pool = {KEYS[6 + n], KEYS[7 + n], KEYS[8 + n]} end
local ever_bought = redis.call('HEXISTS', KEYS[1], 'bucket_seq') == 1
local buckets = load_buckets({KEYS[3], KEYS[1], KEYS[4]}, pool, ever_bought)
local who = nil  -- msisdn, imsi, plan: read once, for the first record
for i, sid in ipairs(sessions) do
  -- Still due now: not refreshed (a later deadline) or ended (gone) since the caller looked.
  local deadline = redis.call('ZSCORE', KEYS[2], sid)
  if deadline and tonumber(deadline) <= now_ms then
    local flat = redis.call('HGETALL', KEYS[4 + i])
    local session_money, units, last = 0, {}, -1
    for j = 1, #flat, 2 do
      local kind = string.sub(flat[j], 1, 1)
      if kind == 'm' then
        money = money + tonumber(flat[j + 1])
        session_money = session_money + tonumber(flat[j + 1])
      elseif kind == 'b' and flat[j + 1] ~= '' then
        release(buckets, flat[j + 1])
      elseif kind == 'u' and tonumber(flat[j + 1]) > 0 then
        units[#units + 1] = string.sub(flat[j], 2) .. ':' .. flat[j + 1]
      elseif kind == 'n' then
        last = math.max(last, tonumber(flat[j + 1]))
      end
    end
    if records then
      who = who or redis.call('HMGET', KEYS[1], 'msisdn', 'imsi', 'plan')
      table.sort(units)
      push_record(KEYS[5 + n], {'w', fmt(now_ms), who[1] or '', who[2] or '', who[3] or '', sid,
        last >= 0 and fmt(last) or '', fmt(session_money), table.concat(units, '|')})
    end
    redis.call('DEL', KEYS[4 + i])
    redis.call('ZREM', KEYS[2], sid)
    released = released + 1
  end
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
return {released, fmt(money), fmt(pushed), fmt(next_look), fmt(recorded)}
