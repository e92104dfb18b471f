-- Remove relayed notifications from the head of an outbox, only if they are still there.
--
-- KEYS[1] outbox            {a:ID}:out
--
-- ARGV OutboxTrimArgs (charging/script_args.py):
--   entries             all of ARGV: the entries that were copied to the stream, in order
--
-- Reply: how many entries were removed. Another relay may have removed some already;
-- entries pushed since are never touched, so none is lost.

local entries = ARGV

local removed = 0
for _, entry in ipairs(entries) do
  if redis.call('LINDEX', KEYS[1], 0) ~= entry then break end
  redis.call('LPOP', KEYS[1])
  removed = removed + 1
end
return removed
