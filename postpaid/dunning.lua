-- Record what one dunning evaluation decided, once: steps taken, late fees charged (to
-- the next invoice), notifications (to the billing outbox) and the service state.
--
-- KEYS[1] steps done        {bill}:ba:BA:dun
-- KEYS[2] pending charges   {bill}:ba:BA:pending
-- KEYS[3] billing account   {bill}:ba:BA
-- KEYS[4] outbox            {bill}:out
-- KEYS[5] audit stream      {bill}:audit
-- KEYS[6] bill run index    {bill}:due
-- ARGV[1] service state to record ('' keep)   ARGV[2] the collectible overdue amount
-- ARGV[3] n records, then n triples:
--         done member, charge JSON for the next invoice ('' none), notification ('' none)
-- ARGV[4 + 3n] now (s)        ARGV[5 + 3n] the account's state epoch the decision was made on
-- ARGV[6 + 3n] the account's money moves (payments, credit notes, invoices) it was made on
--
-- Reaching TERMINATED hands the account over to collection: recorded once in the audit.
-- A charge makes sure the account is billed again (an account whose lines all ended).
--
-- A triple whose member is already in KEYS[1] was applied before and is skipped whole.
-- Reply: number of triples applied now, or -1 when the account's state or money moved
-- since the decision was made (a payment, another evaluation): nothing is applied, decide
-- again.

local n = tonumber(ARGV[3])
local now = ARGV[4 + 3 * n]
local seen = redis.call('HMGET', KEYS[3], 'epoch', 'moves')
if (seen[1] or '0') ~= ARGV[5 + 3 * n] or (seen[2] or '0') ~= ARGV[6 + 3 * n] then return -1 end
local applied = 0
for i = 0, n - 1 do
  local member, charge, note = ARGV[4 + 3 * i], ARGV[5 + 3 * i], ARGV[6 + 3 * i]
  if redis.call('SADD', KEYS[1], member) == 1 then
    applied = applied + 1
    if charge ~= '' then
      redis.call('RPUSH', KEYS[2], charge)
      redis.call('ZADD', KEYS[6], 'NX', now, string.sub(KEYS[3], #'{bill}:ba:' + 1))
    end
    if note ~= '' then redis.call('RPUSH', KEYS[4], note) end
  end
end
if ARGV[1] ~= '' then
  local was = redis.call('HGET', KEYS[3], 'state')
  if was ~= ARGV[1] then
    redis.call('HSET', KEYS[3], 'state', ARGV[1])
    redis.call('HINCRBY', KEYS[3], 'epoch', 1)
    if ARGV[1] == 'TERMINATED' then
      redis.call('XADD', KEYS[5], '*', 'action', 'collection_handover', 'actor', 'dunning',
        'ba', string.sub(KEYS[3], #'{bill}:ba:' + 1), 'amount', ARGV[2], 'at', now)
    end
  end
end
return applied
