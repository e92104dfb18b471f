-- Record what one dunning evaluation decided, once: steps taken, late fees charged (to
-- the next invoice), notifications (to the billing outbox) and the service state.
--
-- KEYS[1] steps done        {bill}:ba:BA:dun
-- KEYS[2] pending charges   {bill}:ba:BA:pending
-- KEYS[3] billing account   {bill}:ba:BA
-- KEYS[4] outbox            {bill}:out
-- KEYS[5] audit stream      {bill}:audit
-- KEYS[6] bill run index    {bill}:due
--
-- ARGV DunningArgs (postpaid/scripts.py), in this order:
--   state               service state to record ('' keep)
--   overdue             the collectible overdue amount
--   steps               the number n of steps, then n DunningStep triples (below)
--   now_s               now (s)
--   epoch               the account's state epoch the decision was made on
--   moves               the account's money moves (payments, credit notes, invoices) it
--                       was made on
-- ARGV DunningStep, 3 values per step:
--   member              the step's member of KEYS[1]
--   charge              charge JSON for the next invoice ('' none)
--   note                notification ('' none)
--
-- Reaching TERMINATED hands the account over to collection: recorded once in the audit.
-- A charge makes sure the account is billed again (an account whose lines all ended).
--
-- A triple whose member is already in KEYS[1] was applied before and is skipped whole.
-- Reply: number of triples applied now, or -1 when the account's state or money moved
-- since the decision was made (a payment, another evaluation): nothing is applied, decide
-- again.

local state = ARGV[1]
local overdue = ARGV[2]
local steps = {}
for i = 0, tonumber(ARGV[3]) - 1 do
  steps[i + 1] = {member = ARGV[4 + 3 * i], charge = ARGV[5 + 3 * i], note = ARGV[6 + 3 * i]}
end
local now_s = ARGV[4 + 3 * #steps]
local epoch = ARGV[5 + 3 * #steps]
local moves = ARGV[6 + 3 * #steps]

local seen = redis.call('HMGET', KEYS[3], 'epoch', 'moves')
if (seen[1] or '0') ~= epoch or (seen[2] or '0') ~= moves then return -1 end
local applied = 0
for _, step in ipairs(steps) do
  if redis.call('SADD', KEYS[1], step.member) == 1 then
    applied = applied + 1
    if step.charge ~= '' then
      redis.call('RPUSH', KEYS[2], step.charge)
      redis.call('ZADD', KEYS[6], 'NX', now_s, string.sub(KEYS[3], #'{bill}:ba:' + 1))
    end
    if step.note ~= '' then redis.call('RPUSH', KEYS[4], step.note) end
  end
end
if state ~= '' then
  local was = redis.call('HGET', KEYS[3], 'state')
  if was ~= state then
    redis.call('HSET', KEYS[3], 'state', state)
    redis.call('HINCRBY', KEYS[3], 'epoch', 1)
    if state == 'TERMINATED' then
      redis.call('XADD', KEYS[5], '*', 'action', 'collection_handover', 'actor', 'dunning',
        'ba', string.sub(KEYS[3], #'{bill}:ba:' + 1), 'amount', overdue, 'at', now_s)
    end
  end
end
return applied
