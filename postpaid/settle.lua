-- Settle an issued invoice on its account: the invoice was written to PostgreSQL (with
-- its gapless number) before this runs; this applies what it does to the account in
-- Redis, once. Invoices are settled in the order they were composed: the account counts
-- them ('issued'), each invoice carries the count it was composed on (account_seq), and
-- one whose count is behind was settled before: ALREADY (a run resumed after a crash).
--
-- KEYS[1] billing account   TAG:ba:BA
-- KEYS[2] pending charges   TAG:ba:BA:pending
-- KEYS[3] open invoices     TAG:ba:BA:open
-- KEYS[4] dunning index     TAG:dunning
-- KEYS[5] bill run index    TAG:due
-- KEYS[6] delivery queue    TAG:deliver   (the invoice is queued for delivery)
-- KEYS[7] the account's lines TAG:ba:BA:lines
-- KEYS[8] accounts to re-evaluate TAG:recheck (a negative invoice paid older ones)
-- KEYS[9] the invoice's state TAG:is:NUMBER
-- KEYS[10] credit outbox    TAG:credits (the credit's movements, relayed to PostgreSQL's
--                           credit_movements by postpaid/credit_movements.py)
-- KEYS[11] settled invoices TAG:settled (invoices this leaves with nothing open: their
--                           state goes once PostgreSQL answers for them, settled.py)
-- (TAG: the hash tag of the account's shard, postpaid/keys.py: every key is in its slot)
--
-- ARGV SettleArgs (postpaid/scripts.py), in this order:
--   number              the invoice number
--   account_seq         the account's 'issued' count the invoice was composed on
--   total               invoice total (minor units)
--   due_s               due day (s, local midnight)
--   issued_s            issued at (s)
--   period              the period billed
--   next_period         the next period ('' for a final invoice: the account's periods do
--                       not move)
--   next_end_s          the next period's end (s)
--   final_line          final invoice: the line (charging account id) that leaves the
--                       account, else ''
--   deposit             the deposit this invoice offsets (minor units, 0 none)
--   pending_taken       pending charges the invoice took (from the head of KEYS[2])
--   paid_counted        payments (net of refunds) the invoice listed as received
--   credited_counted    credit notes the invoice listed as received
--   notes_counted       credit note entries the invoice listed (head of credit_notes_since)
--   state_prefix        invoice state key prefix "TAG:is:" (for older open invoices; one
--                       whose hash tag is not KEYS[1]'s is refused: slot_lib.lua)
--
-- A payment that arrived after the invoice was composed is not lost: only what the
-- invoice counted is taken off the "since the last invoice" figures.
-- The account's unallocated credit pays the new invoice first; a negative invoice adds
-- to the credit, which then pays the oldest open invoices.
-- Reply: {'ISSUED', open} | {'ALREADY'}

local number = ARGV[1]
local account_seq = tonumber(ARGV[2])
local total = ARGV[3]
local due_s = ARGV[4]
local issued_s = ARGV[5]
local period = ARGV[6]
local next_period = ARGV[7]
local next_end_s = ARGV[8]
local final_line = ARGV[9]
local deposit = tonumber(ARGV[10])
local pending_taken = tonumber(ARGV[11])
local paid_counted = tonumber(ARGV[12])
local credited_counted = tonumber(ARGV[13])
local notes_counted = tonumber(ARGV[14])
local state_prefix = ARGV[15]

local refused = outside_slot(KEYS[1], state_prefix, 'state_prefix')
if refused then return refused end

local ba_id = string.sub(KEYS[1], select(2, string.find(KEYS[1], '}:ba:', 1, true)) + 1)

-- The account's next period to bill moves on once (also when a run is repeated).
local function advance()
  if next_period ~= '' and redis.call('HGET', KEYS[1], 'next_period') == period then
    redis.call('HSET', KEYS[1], 'next_period', next_period)
    redis.call('ZADD', KEYS[5], next_end_s, ba_id)
  end
end

if tonumber(redis.call('HGET', KEYS[1], 'issued') or '0') > account_seq then
  advance()
  return {'ALREADY'}
end

local ba = redis.call('HMGET', KEYS[1], 'credit', 'balance', 'credit_notes_since')
-- Each movement of the credit, in the same script as the change; ids are unique per
-- account ("inv:NUMBER", "inv:NUMBER:OLDER") and settling runs once, so each is kept once.
local function credit_moved(movement, what, by, invoice)
  -- Credit held before revision 0014 has no rows: recorded first, once (as in pay.lua).
  local before = tonumber(ba[1] or '0')
  if redis.call('HSETNX', KEYS[1], 'credit_rows', '1') == 1 and before > 0 then
    redis.call('RPUSH', KEYS[10], cjson.encode({movement = 'opening', kind = 'opening', ba = ba_id,
      source = '', invoice = '', amount = string.format('%d', before), at_s = issued_s}))
  end
  redis.call('RPUSH', KEYS[10], cjson.encode({movement = movement, kind = what, ba = ba_id,
    source = number, invoice = invoice, amount = string.format('%d', by), at_s = issued_s}))
end
local amount = tonumber(total)
local credit = tonumber(ba[1] or '0')
local open
if amount >= 0 then
  local applied = math.min(credit, amount)
  open = amount - applied
  credit = credit - applied
  if applied > 0 then credit_moved('inv:' .. number, 'applied', applied, number) end
else
  open = 0
  credit = credit - amount
  credit_moved('inv:' .. number, 'negative_invoice', -amount, number)
  redis.call('SADD', KEYS[8], ba_id)
  -- The credit pays what is still open, oldest first.
  for _, older in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
    if credit <= 0 then break end
    local key = state_prefix .. older
    local o = tonumber(redis.call('HGET', key, 'open'))
    local t = math.min(o, credit)
    credit = credit - t
    if t > 0 then credit_moved('inv:' .. number .. ':' .. older, 'applied', t, older) end
    redis.call('HSET', key, 'open', string.format('%d', o - t))
    if o - t == 0 then
      redis.call('HSET', key, 'status', 'PAID')
      redis.call('LREM', KEYS[3], 1, older)
      redis.call('SADD', KEYS[11], older)
    end
  end
end

-- The credit notes listed on this invoice leave the list; later ones stay for the next.
local notes = ba[3] or ''
for _ = 1, notes_counted do
  local at = string.find(notes, ';', 1, true)
  if not at then notes = '' break end
  notes = string.sub(notes, at + 1)
end

redis.call('HSET', KEYS[9], 'ba', ba_id, 'total', total,
  'open', string.format('%d', open), 'disputed', '0', 'due', due_s, 'issued', issued_s,
  'status', open > 0 and 'OPEN' or 'PAID', 'delivery', 'PENDING')
if open > 0 then redis.call('RPUSH', KEYS[3], number) else redis.call('SADD', KEYS[11], number) end
local first = redis.call('LINDEX', KEYS[3], 0)
if first then
  redis.call('ZADD', KEYS[4], redis.call('HGET', state_prefix .. first, 'due'), ba_id)
else
  redis.call('ZREM', KEYS[4], ba_id)
end
if pending_taken > 0 then redis.call('LTRIM', KEYS[2], pending_taken, -1) end
redis.call('HSET', KEYS[1], 'credit', string.format('%d', credit),
  'balance', string.format('%d', tonumber(ba[2] or '0') + amount), 'credit_notes_since', notes,
  'last_invoice', number)
redis.call('HINCRBY', KEYS[1], 'paid_since', string.format('%d', -paid_counted))
redis.call('HINCRBY', KEYS[1], 'credited_since', string.format('%d', -credited_counted))
redis.call('HINCRBY', KEYS[1], 'moves', 1)
redis.call('HINCRBY', KEYS[1], 'issued', 1)
if final_line ~= '' then redis.call('HDEL', KEYS[7], final_line) end
if deposit > 0 then redis.call('HSET', KEYS[1], 'deposit', '0') end
redis.call('RPUSH', KEYS[6], number)
advance()
return {'ISSUED', string.format('%d', open)}
