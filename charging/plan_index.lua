-- Which accounts are on which plan, and the catalog switch that must not strand any.
-- Global keys only (no account's slot), so each call is one atomic step on the index.
--
-- ARGV[1] operation:
--   join    KEYS[1] catalog:plans  KEYS[2] plan:members:<new>  KEYS[3] plan:members:<old> (or <new>)
--           ARGV[2] account, ARGV[3] new plan
--           -> 1 joined, 0 the plan is not in the running catalog (nothing changed)
--   leave   KEYS[1] plan:members:<plan>, ARGV[2] account -> 1
--   switch  KEYS[1] catalog:current  KEYS[2] catalog:plans  KEYS[3] plan:moves  KEYS[4..] as ARGV[4] says
--           ARGV[2] expected current version ('' when none), ARGV[3] new version,
--           ARGV[4] JSON {guards: [[label, [key index, ...]], ...],
--                         moves: [[old, new, members old idx, members new idx, moving old idx], ...],
--                         plans: [plan id, ...]}
--           -> {'STALE', current} when another catalog became current meanwhile;
--              {'IN_USE', label, count, ...} for each guard whose member sets are not all empty;
--              {'OK'} after moving every migrated plan's members to its successor (and the
--              accounts still to be rewritten into plan:moving:<old>), recording old -> new
--              (and retargeting earlier moves to old; entries are kept, so a plan change
--              that raced with the switch still finds the successor), replacing catalog:plans and
--              setting catalog:current. Nothing changes unless the answer is OK.
--   init    KEYS[1] catalog:current  KEYS[2] catalog:plans, ARGV[2] version, ARGV[3..] its plan ids
--           -> 1 set, 0 already set or another version is current (the index's first start)

local op = ARGV[1]
if op == 'join' then
  if redis.call('SISMEMBER', KEYS[1], ARGV[3]) == 0 then
    return 0
  end
  if KEYS[3] ~= KEYS[2] then
    redis.call('SREM', KEYS[3], ARGV[2])
  end
  redis.call('SADD', KEYS[2], ARGV[2])
  return 1
elseif op == 'leave' then
  redis.call('SREM', KEYS[1], ARGV[2])
  return 1
elseif op == 'switch' then
  local current = redis.call('GET', KEYS[1]) or ''
  if current ~= ARGV[2] then
    return {'STALE', current}
  end
  local plan = cjson.decode(ARGV[4])
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
  redis.call('SET', KEYS[1], ARGV[3])
  return {'OK'}
elseif op == 'init' then
  if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('GET', KEYS[1]) ~= ARGV[2] then
    return 0
  end
  redis.call('SADD', KEYS[2], unpack(ARGV, 3))
  return 1
end
return redis.error_reply('unknown operation ' .. tostring(op))
