-- Event-based charging: one debit, refund, balance check or price enquiry, atomically.
--
-- KEYS[1] account hash      {a:ID}
-- KEYS[2] answer            {a:ID}:e:EVENT   (debits and refunds only)
-- ARGV[1] action: D (direct debit), R (refund), C (check balance), P (price enquiry)
-- ARGV[2] payload digest    ARGV[3] identity field   ARGV[4] identity value
-- ARGV[5] plan id the event was rated with            ARGV[6] amount (micros)
-- ARGV[7] answer ttl (s)    ARGV[8] largest balance allowed
--
-- Reply, one of:
--   {'DONE', body}     body = "<result code> <balance micros> <available micros>"
--   {'REPLAY', body}   the event id was applied before with the same payload
--   {'CONFLICT'}       the event id was used before with another payload
--   {'UNKNOWN'}        no such account, or the identity is not on it
--   {'PLAN', id}       the account's plan differs from ARGV[5]: re-rate and retry
--   {'LIMIT'}          a refund would take the balance past ARGV[8]: nothing changed

local action = ARGV[1]
local writes = action == 'D' or action == 'R'
if writes then
  local prev = redis.call('GET', KEYS[2])
  if prev then
    local sep = string.find(prev, '|', 1, true)
    if string.sub(prev, 1, sep - 1) ~= ARGV[2] then return {'CONFLICT'} end
    return {'REPLAY', string.sub(prev, sep + 1)}
  end
end

local acct = redis.call('HMGET', KEYS[1], 'balance', 'reserved', 'plan', 'status', ARGV[3])
if not acct[1] or acct[5] ~= ARGV[4] then return {'UNKNOWN'} end
if acct[3] ~= ARGV[5] then return {'PLAN', acct[3]} end

local balance = tonumber(acct[1])
local reserved = tonumber(acct[2])
local amount = tonumber(ARGV[6])
local rc = 2001

if action == 'D' then
  if acct[4] ~= 'active' then
    rc = 4010
  elseif balance - reserved < amount then
    rc = 4012
  else
    balance = balance - amount
  end
elseif action == 'R' then
  if balance + amount > tonumber(ARGV[8]) then return {'LIMIT'} end
  balance = balance + amount
elseif action == 'C' then
  if acct[4] ~= 'active' then rc = 4010 end
end

local body = string.format('%d %d %d', rc, balance, balance - reserved)
if writes then
  if rc == 2001 then redis.call('HSET', KEYS[1], 'balance', string.format('%d', balance)) end
  redis.call('SET', KEYS[2], ARGV[2] .. '|' .. body, 'EX', ARGV[7])
end
return {'DONE', body}
