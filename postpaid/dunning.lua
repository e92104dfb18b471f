-- Apply one dunning decision committed in PostgreSQL (postpaid/dunning_record.py), once:
-- late fees (to the next invoice), notifications (to the billing outbox) and the
-- account's service state. Applying it again changes nothing.
--
-- KEYS[1] steps applied     TAG:ba:BA:dun
-- KEYS[2] pending charges   TAG:ba:BA:pending
-- KEYS[3] billing account   TAG:ba:BA
-- KEYS[4] outbox            TAG:out
-- KEYS[5] bill run index    TAG:due
-- (TAG: the hash tag of the account's shard, postpaid/keys.py: every key is in its slot)
--
-- ARGV DunningArgs (postpaid/scripts.py), in this order:
--   state               service state to record ('' keep)
--   steps               the number n of steps, then n DunningStep triples (below)
--   now_s               now (s)
-- ARGV DunningStep, 3 values per step:
--   member              the step's member of KEYS[1]
--   charge              charge JSON for the next invoice ('' none)
--   note                notification ('' none)
--
-- A charge makes sure the account is billed again (an account whose lines all ended).
-- A triple whose member is already in KEYS[1] was applied before and is skipped whole.
-- KEYS[1] then holds this decision's members only: they guard its own re-application
-- (a crash between this script and the commit of its outcome); a decision is made and
-- applied under the account's lock only once every earlier one's outcome is committed
-- (postpaid/collection.py), so earlier members can no longer matter, and the set stays
-- one decision's size however many episodes the account goes through.
-- The state changes the account's state epoch (its lines' order ids) when it differs.
-- Reply: number of triples applied now.

local state = ARGV[1]
local steps = {}
for i = 0, tonumber(ARGV[2]) - 1 do
  steps[i + 1] = {member = ARGV[3 + 3 * i], charge = ARGV[4 + 3 * i], note = ARGV[5 + 3 * i]}
end
local now_s = ARGV[3 + 3 * #steps]

local applied = 0
local members = {}
for _, step in ipairs(steps) do
  members[step.member] = true
  if redis.call('SADD', KEYS[1], step.member) == 1 then
    applied = applied + 1
    if step.charge ~= '' then
      redis.call('RPUSH', KEYS[2], step.charge)
      redis.call('ZADD', KEYS[5], 'NX', now_s, string.sub(KEYS[3], select(2, string.find(KEYS[3], '}:ba:', 1, true)) + 1))
    end
    if step.note ~= '' then redis.call('RPUSH', KEYS[4], step.note) end
  end
end
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not members[member] then redis.call('SREM', KEYS[1], member) end
end
if state ~= '' then
  local was = redis.call('HGET', KEYS[3], 'state')
  if was ~= state then
    redis.call('HSET', KEYS[3], 'state', state)
    redis.call('HINCRBY', KEYS[3], 'epoch', 1)
  end
end
return applied
