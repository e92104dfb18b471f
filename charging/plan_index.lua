-- Which accounts are on which plan, and the catalog switch that must not strand any
-- (charging/plan_index.py). Global keys only (no account's slot), so each call is one
-- atomic step on the index.
--
-- KEYS[1] join: catalog:plans; leave: plan:members:<plan>;
--         switch and init: catalog:current
-- KEYS[2] join: plan:members:<plan_id>; switch and init: catalog:plans
-- KEYS[3] join: plan:members:<the account's plan until now> (or KEYS[2] again);
--         switch: plan:moves
-- KEYS[4] switch: {catalog}:cdr, the catalog's record outbox (its loads' audit entries)
-- KEYS[5] switch: {catalog}:applied, the catalog's history outbox (versions applied)
-- KEYS[6..] switch: the member and moving sets, by the indexes plan_json names
--
-- ARGV[1] the operation (the record's OP), then that record's fields
-- (charging/script_args.py), in this order:
-- ARGV PlanJoin, OP join: put the account on the plan if the running catalog has it.
-- Reply: 1 joined, 0 the plan is not in the running catalog (nothing changed).
--   account
--   plan_id
-- ARGV PlanLeave, OP leave: take the account off the plan. Reply: 1.
--   account
-- ARGV CatalogSwitch, OP switch: make version current. Reply: {'STALE', current} when
-- another catalog became current meanwhile; {'IN_USE', label, count, ...} for each guard
-- whose member sets are not all empty; {'OK'} after moving each migrated plan's members
-- to its successor (and into plan:moving:<old>, the accounts still to be rewritten),
-- recording old -> new in plan:moves (earlier moves to old are retargeted; entries are
-- kept, so a plan change that raced with the switch still finds the successor),
-- replacing catalog:plans and setting catalog:current, and pushing audit_entry (when
-- not empty) to KEYS[4] first, so that the switch and its entry happen together: nothing
-- changes unless OK.
--   expected_version    the version current when the caller checked ('' when none)
--   version
--   plan_json           {guards: [[label, [key index, ...]], ...],
--                        moves: [[old, new, members old, members new, moving old], ...],
--                        plans: [plan id, ...]} (key indexes into KEYS)
--   audit_entry         the load's record outbox entry (charging/cdrs.py ``c``), or ''
--   version_entry       the version applied, pushed to KEYS[5] with audit_entry
--                       (charging/document_history.py ``v``), or ''
-- ARGV PlanIndexInit, OP init: the plans of the running catalog, on the index's first
-- start. Reply: 1 set, 0 already set or another version is current.
--   version
--   plan_ids            the rest of ARGV

local op = ARGV[1]
local account, plan_id, expected_version, version, plan_json, audit_entry, version_entry, plan_ids
if op == 'join' then
  account, plan_id = ARGV[2], ARGV[3]
elseif op == 'leave' then
  account = ARGV[2]
elseif op == 'switch' then
  expected_version, version, plan_json, audit_entry, version_entry = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
elseif op == 'init' then
  version = ARGV[2]
  plan_ids = {unpack(ARGV, 3)}
else
  return redis.error_reply('unknown operation ' .. tostring(op))
end

if op == 'join' then
  if redis.call('SISMEMBER', KEYS[1], plan_id) == 0 then
    return 0
  end
  if KEYS[3] ~= KEYS[2] then
    redis.call('SREM', KEYS[3], account)
  end
  redis.call('SADD', KEYS[2], account)
  return 1
elseif op == 'leave' then
  redis.call('SREM', KEYS[1], account)
  return 1
elseif op == 'init' then
  if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('GET', KEYS[1]) ~= version then
    return 0
  end
  redis.call('SADD', KEYS[2], unpack(plan_ids))
  return 1
end

-- switch
local current = redis.call('GET', KEYS[1]) or ''
if current ~= expected_version then
  return {'STALE', current}
end
local plan = cjson.decode(plan_json)
local in_use = {'IN_USE'}
for _, guard in ipairs(plan.guards) do
  local count = 0
  for _, index in ipairs(guard[2]) do
    count = count + redis.call('SCARD', KEYS[index])
  end
  if count > 0 then
    table.insert(in_use, guard[1])
    table.insert(in_use, count)
  end
end
if #in_use > 1 then
  return in_use
end
-- The first writes: should one fail (the key holds something else), nothing has changed
-- (a failed second push is followed by no write, and a script's writes are undone by
-- nothing: so the history outbox is checked before the audit entry is pushed).
local history_type = redis.call('TYPE', KEYS[5]).ok
if version_entry ~= '' and history_type ~= 'list' and history_type ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[5] .. ' is not a list: nothing loaded')
end
if audit_entry ~= '' then
  redis.call('RPUSH', KEYS[4], audit_entry)
end
if version_entry ~= '' then
  redis.call('RPUSH', KEYS[5], version_entry)
end
for _, move in ipairs(plan.moves) do
  local old, new = move[1], move[2]
  local members_old, members_new, moving_old = KEYS[move[3]], KEYS[move[4]], KEYS[move[5]]
  if redis.call('EXISTS', members_old) == 1 then
    redis.call('SUNIONSTORE', members_new, members_new, members_old)
    redis.call('SUNIONSTORE', moving_old, moving_old, members_old)
    redis.call('DEL', members_old)
  end
  local earlier = redis.call('HGETALL', KEYS[3])
  for i = 1, #earlier, 2 do
    if earlier[i + 1] == old then
      redis.call('HSET', KEYS[3], earlier[i], new)
    end
  end
  redis.call('HSET', KEYS[3], old, new)
end
redis.call('DEL', KEYS[2])
for _, id in ipairs(plan.plans) do
  redis.call('SADD', KEYS[2], id)
end
redis.call('SET', KEYS[1], version)
return {'OK'}
