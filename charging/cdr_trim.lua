-- Remove relayed records from the head of a record outbox, only if they are still there.
--
-- KEYS[1] record outbox     {a:ID}:cdr
--
-- ARGV CdrTrimArgs (charging/script_args.py):
--   first               the first entry the relay read (and committed to PostgreSQL)
--   count               how many entries it read from the head
--
-- Reply: how many entries were removed: count, or 0 when another relay removed them first.
--
-- Why the first entry is enough (outbox_trim.lua compares every entry): scripts only push
-- at the tail and relays only remove at the head, and no two entries are equal (each holds
-- its record's id and time). While the first entry read is still at the head, nothing has
-- been removed since the relay read, so the count entries at the head are exactly those it
-- committed; entries pushed since are behind them and stay.

local first = ARGV[1]
local count = tonumber(ARGV[2])

if redis.call('LINDEX', KEYS[1], 0) ~= first then return 0 end
redis.call('LTRIM', KEYS[1], count, -1)
return count
