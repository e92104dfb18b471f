-- A job lease held by one process among all processes and hosts (charging/leases.py):
-- taken with SET NX PX, kept and given back by this script, only by its holder.
--
-- KEYS[1] the lease          lease:{<job>} (charging/keys.py)
--
-- ARGV[1] the operation (the record's OP), then that record's fields
-- (charging/script_args.py), in this order:
-- ARGV LeaseExtend, OP extend: push the expiry out if the token still holds the lease.
-- Reply: 1 extended, 0 the lease is another holder's or lapsed (nothing changed).
--   token
--   ttl_ms
-- ARGV LeaseRelease, OP release: delete the lease if the token holds it.
-- Reply: 1 released, 0 the lease is another holder's or lapsed (nothing changed).
--   token

local op = ARGV[1]
local token, ttl_ms
if op == 'extend' then
  token, ttl_ms = ARGV[2], ARGV[3]
elseif op == 'release' then
  token = ARGV[2]
else
  return redis.error_reply('unknown operation ' .. tostring(op))
end

if redis.call('GET', KEYS[1]) ~= token then
  return 0
end
if op == 'extend' then
  redis.call('PEXPIRE', KEYS[1], ttl_ms)
else
  redis.call('DEL', KEYS[1])
end
return 1
