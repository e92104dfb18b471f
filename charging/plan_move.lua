-- Move one account from a migrated plan to its successor, if it is still on the old one
-- (it may have changed plan since the catalog switch).
--
-- KEYS[1] the account hash
--
-- ARGV PlanMoveArgs (charging/script_args.py), in this order:
--   old_plan
--   new_plan
-- Reply: 1 moved, 0 the account is on another plan or gone (nothing changed).

local old_plan, new_plan = ARGV[1], ARGV[2]
if redis.call('HGET', KEYS[1], 'plan') ~= old_plan then
  return 0
end
redis.call('HSET', KEYS[1], 'plan', new_plan)
return 1
