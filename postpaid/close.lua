-- Close a bill period of a postpaid charging account and read its usage: from now on usage
-- goes to the next period, and the closed usage stops counting against the headroom (it is
-- invoiced; once overdue it counts again through 'overdue', credit.lua). (charging's
-- ledger_lib.lua is prepended.)
--
-- KEYS[1] account hash      {a:ID}
-- KEYS[2] usage aggregates  {a:ID}:u        KEYS[3] usage records  {a:ID}:ud
--
-- ARGV CloseArgs (postpaid/scripts.py), in this order:
--   period              the period to close
--   following           the periods that follow it "id:end s|id:end s|..." (kept open,
--                       none skipped)
--
-- The open periods up to and including period (period ids are "YYYY-MM" and compare as
-- text) are closed together and recorded in 'closed', so a line that joined its account
-- while an earlier period was being billed has that usage on this invoice rather than
-- lost. Only the periods closed here count: usage left over from periods closed before
-- (invoiced, not purged yet) is never returned again. A repeated close returns what the
-- first one closed.
--
-- Reply: {status, usage cost micros, plan, aggregates, records, period ids} where status is
--        'CLOSED'  the period was open and is closed now
--        'ALREADY' the period was closed before (a run again)
--        aggregates: flat field/value pairs, records: the records of the closed periods,
--        period ids: the periods closed (more than period for a line that joined late)
--     or {'UNKNOWN'}       not a postpaid account

local period = ARGV[1]
local following = ARGV[2]

local acct = redis.call('HMGET', KEYS[1], 'bp', 'balance', 'plan', 'closed')
if not acct[1] then return {'UNKNOWN'} end
local kept, closing = {}, {}
for _, entry in ipairs(split(acct[1], '|')) do
  local id = string.sub(entry, 1, string.find(entry, ':', 1, true) - 1)
  if id <= period then closing[id] = true else kept[#kept + 1] = entry end
end
local status = 'CLOSED'
if next(closing) == nil then
  status = 'ALREADY'
  -- what the close of this period took, if it was the last close
  local last = acct[4] and split(acct[4], '|') or {}
  if last[#last] == period then
    for _, id in ipairs(last) do closing[id] = true end
  else
    closing[period] = true
  end
end

local cost = 0
local agg = {}
local flat = redis.call('HGETALL', KEYS[2])
for i = 1, #flat, 2 do
  if closing[string.sub(flat[i], 1, string.find(flat[i], '|', 1, true) - 1)] then
    local v = split(flat[i + 1], ',')
    cost = cost + tonumber(v[2])
    agg[#agg + 1] = flat[i]
    agg[#agg + 1] = flat[i + 1]
  end
end
local recs = {}
for _, r in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
  if closing[string.sub(r, 1, string.find(r, ',', 1, true) - 1)] then recs[#recs + 1] = r end
end

if status == 'CLOSED' then
  local open = {}
  for _, entry in ipairs(kept) do open[string.sub(entry, 1, string.find(entry, ':', 1, true) - 1)] = true end
  for _, entry in ipairs(split(following, '|')) do
    if not open[string.sub(entry, 1, string.find(entry, ':', 1, true) - 1)] then kept[#kept + 1] = entry end
  end
  local closed_ids = {}
  for id in pairs(closing) do closed_ids[#closed_ids + 1] = id end
  table.sort(closed_ids)
  redis.call('HSET', KEYS[1], 'bp', table.concat(kept, '|'), 'closed', table.concat(closed_ids, '|'),
    'balance', string.format('%d', tonumber(acct[2]) + cost))
end
local ids = {}
for id in pairs(closing) do ids[#ids + 1] = id end
table.sort(ids)
return {status, string.format('%d', cost), acct[3], agg, recs, ids}
