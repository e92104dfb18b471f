-- Move one account from a dropped plan to its successor, if it is still on the old one
-- (it may have changed plan since the catalog switch).
--
-- KEYS[1] the account hash
-- ARGV[1] old plan, ARGV[2] new plan
-- -> 1 moved, 0 the account is on another plan or gone (nothing changed)

if redis.call('HGET', KEYS[1], 'plan') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'plan', ARGV[2])
return 1
