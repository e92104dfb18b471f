-- Close a bill period of a postpaid charging account and read its usage: from now on
-- usage goes to the next period, and the closed period's usage stops counting against the
-- headroom (it is invoiced; once overdue it counts again through 'overdue', credit.lua).
--
-- KEYS[1] account hash      {a:ID}
-- KEYS[2] usage aggregates  {a:ID}:u        KEYS[3] usage records  {a:ID}:ud
-- ARGV[1] the period to close (must be the first open one)
-- ARGV[2] the period to open at the end of the list "id:end s"
--
-- Reply: {status, usage cost micros, plan, aggregates, records} where status is
--        'CLOSED'  the period was open and is closed now
--        'ALREADY' the period was closed before (a run again)
--        aggregates: flat field/value pairs of the period, records: the period's records
--     or {'EARLIER', id}   an earlier period is still open: close it first
--     or {'UNKNOWN'}       not a postpaid account

local acct = redis.call('HMGET', KEYS[1], 'bp', 'balance', 'plan')
if not acct[1] then return {'UNKNOWN'} end
local bp = acct[1]
local sep = string.find(bp, '|', 1, true)
local first = sep and string.sub(bp, 1, sep - 1) or bp
local first_id = string.sub(first, 1, string.find(first, ':', 1, true) - 1)
local status = 'CLOSED'
if first_id ~= ARGV[1] then
  if string.find('|' .. bp, '|' .. ARGV[1] .. ':', 1, true) then return {'EARLIER', first_id} end
  status = 'ALREADY'
end

local cost = 0
local agg = {}
local flat = redis.call('HGETALL', KEYS[2])
local prefix = ARGV[1] .. '|'
for i = 1, #flat, 2 do
  if string.sub(flat[i], 1, #prefix) == prefix then
    local v = flat[i + 1]
    local a = string.find(v, ',', 1, true)
    local b = string.find(v, ',', a + 1, true)
    cost = cost + tonumber(string.sub(v, a + 1, b - 1))
    agg[#agg + 1] = flat[i]
    agg[#agg + 1] = v
  end
end
-- Records are appended in time order: the period's are at the head.
local recs = {}
local rec_prefix = ARGV[1] .. ','
local at = 0
while true do
  local chunk = redis.call('LRANGE', KEYS[3], at, at + 199)
  if #chunk == 0 then break end
  local stop = false
  for _, r in ipairs(chunk) do
    if string.sub(r, 1, #rec_prefix) == rec_prefix then
      recs[#recs + 1] = r
    else
      stop = true
      break
    end
  end
  if stop or #chunk < 200 then break end
  at = at + 200
end

if status == 'CLOSED' then
  local rest = sep and string.sub(bp, sep + 1) or ''
  if rest ~= '' then rest = rest .. '|' end
  redis.call('HSET', KEYS[1], 'bp', rest .. ARGV[2], 'balance', string.format('%d', tonumber(acct[2]) + cost))
end
return {status, string.format('%d', cost), acct[3], agg, recs}
