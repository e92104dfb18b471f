-- Issue an invoice: take the next number of the issuer's gapless sequence and store the
-- invoice with it, atomically with everything the invoice changes on its account.
--
-- KEYS[1] bill run marker   {bill}:run:BA:PERIOD (or :final-LINE)
-- KEYS[2] number sequence   {bill}:seq:inv:ISSUER
-- KEYS[3] billing account   {bill}:ba:BA
-- KEYS[4] pending charges   {bill}:ba:BA:pending
-- KEYS[5] invoices          {bill}:ba:BA:inv
-- KEYS[6] open invoices     {bill}:ba:BA:open
-- KEYS[7] dunning index     {bill}:dunning
-- KEYS[8] bill run index    {bill}:due
-- KEYS[9] delivery queue    {bill}:deliver   (the invoice is queued for delivery)
-- KEYS[10] the account's lines {bill}:ba:BA:lines
-- KEYS[11] accounts to re-evaluate {bill}:recheck (a negative invoice paid older ones)
--
-- ARGV IssueArgs (postpaid/scripts.py), in this order:
--   invoice             invoice JSON; the text \1NUMBER\1 (never in JSON text, which
--                       escapes control characters) stands for the number
--   total               invoice total (minor units)
--   due_s               due day (s, local midnight)
--   moves               balance moves the invoice counted (account 'moves'): stale if
--                       another came since
--   pending_taken       pending charges the invoice took (from the head of KEYS[4])
--   number_prefix       "INV-"
--   issued_s            issued at (s)
--   invoice_prefix      invoice key prefix "{bill}:inv:"
--   state_prefix        invoice state key prefix "{bill}:is:"
--   period              the period billed
--   next_period         the next period ('' for a final invoice: the account's periods do
--                       not move)
--   next_end_s          the next period's end (s)
--   final_line          final invoice: the line (charging account id) that leaves the
--                       account, else ''
--   deposit             the deposit this invoice offsets (minor units, 0 none): the
--                       account's deposit is used up
-- The invoice keys are not in KEYS: they are made here from the two prefixes and the
-- number this script takes from the sequence (and the open invoices' numbers), so the
-- caller cannot name them; all share the {bill} slot.
--
-- Every issue counts as a move of the account, so two invoices composed from the same
-- reading (a bill run and a final invoice) cannot both be issued: the second is STALE.
-- The account's unallocated credit pays the new invoice first; a negative invoice adds
-- to the credit, which then pays the oldest open invoices.
-- Reply: {'ISSUED', number, open} | {'ALREADY', number} | {'STALE'} (read again, recompose)

local invoice = ARGV[1]
local total = ARGV[2]
local due_s = ARGV[3]
local moves = tonumber(ARGV[4])
local pending_taken = tonumber(ARGV[5])
local number_prefix = ARGV[6]
local issued_s = ARGV[7]
local invoice_prefix = ARGV[8]
local state_prefix = ARGV[9]
local period = ARGV[10]
local next_period = ARGV[11]
local next_end_s = ARGV[12]
local final_line = ARGV[13]
local deposit = tonumber(ARGV[14])

local ba_id = string.sub(KEYS[3], #'{bill}:ba:' + 1)

-- The account's next period to bill moves on once (also when a run is repeated).
local function advance()
  if next_period ~= '' and redis.call('HGET', KEYS[3], 'next_period') == period then
    redis.call('HSET', KEYS[3], 'next_period', next_period)
    redis.call('ZADD', KEYS[8], next_end_s, ba_id)
  end
end

local done = redis.call('GET', KEYS[1])
if done then
  advance()
  return {'ALREADY', done}
end
local ba = redis.call('HMGET', KEYS[3], 'moves', 'credit', 'balance')
if tonumber(ba[1] or '0') ~= moves then return {'STALE'} end

local seq = redis.call('INCR', KEYS[2])
local number = number_prefix .. string.format('%08d', seq)
local doc = string.gsub(invoice, '\1NUMBER\1', number, 1)
local amount = tonumber(total)
local credit = tonumber(ba[2] or '0')
local open
if amount >= 0 then
  local applied = math.min(credit, amount)
  open = amount - applied
  credit = credit - applied
else
  open = 0
  credit = credit - amount
  redis.call('SADD', KEYS[11], ba_id)
  -- The credit pays what is still open, oldest first.
  for _, older in ipairs(redis.call('LRANGE', KEYS[6], 0, -1)) do
    if credit <= 0 then break end
    local key = state_prefix .. older
    local o = tonumber(redis.call('HGET', key, 'open'))
    local t = math.min(o, credit)
    credit = credit - t
    redis.call('HSET', key, 'open', string.format('%d', o - t))
    if o - t == 0 then
      redis.call('HSET', key, 'status', 'PAID')
      redis.call('LREM', KEYS[6], 1, older)
    end
  end
end

redis.call('SET', invoice_prefix .. number, doc)
redis.call('HSET', state_prefix .. number, 'ba', ba_id, 'total', total,
  'open', string.format('%d', open), 'disputed', '0', 'due', due_s, 'issued', issued_s,
  'status', open > 0 and 'OPEN' or 'PAID', 'delivery', 'PENDING')
redis.call('RPUSH', KEYS[5], number)
if open > 0 then redis.call('RPUSH', KEYS[6], number) end
local first = redis.call('LINDEX', KEYS[6], 0)
if first then
  redis.call('ZADD', KEYS[7], redis.call('HGET', state_prefix .. first, 'due'), ba_id)
else
  redis.call('ZREM', KEYS[7], ba_id)
end
if pending_taken > 0 then redis.call('LTRIM', KEYS[4], pending_taken, -1) end
redis.call('HSET', KEYS[3], 'credit', string.format('%d', credit),
  'balance', string.format('%d', tonumber(ba[3] or '0') + amount), 'paid_since', '0', 'credited_since', '0', 'credit_notes_since', '',
  'last_invoice', number)
redis.call('HINCRBY', KEYS[3], 'moves', 1)
if final_line ~= '' then redis.call('HDEL', KEYS[10], final_line) end
if deposit > 0 then redis.call('HSET', KEYS[3], 'deposit', '0') end
redis.call('SET', KEYS[1], number)
redis.call('RPUSH', KEYS[9], number)
advance()
return {'ISSUED', number, string.format('%d', open)}
