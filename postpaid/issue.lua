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
-- ARGV[1] invoice JSON; the text \1NUMBER\1 (never in JSON text, which escapes control
--         characters) stands for the number
-- ARGV[2] invoice total (minor units)      ARGV[3] due day (s, local midnight)
-- ARGV[4] balance moves the invoice counted (account 'moves'): stale if another came since
-- ARGV[5] pending charges the invoice took (from the head of KEYS[4])
-- ARGV[6] number prefix ("INV-")           ARGV[7] issued at (s)
-- ARGV[8] invoice key prefix "{bill}:inv:" ARGV[9] invoice state key prefix "{bill}:is:"
-- ARGV[10] the period billed  ARGV[11] the next period ('' for a final invoice: the
--          account's periods do not move)  ARGV[12] the next period's end (s)
-- ARGV[13] final invoice: the line (charging account id) that leaves the account, else ''
-- ARGV[14] the deposit this invoice offsets (minor units, 0 none): the account's deposit
--          is used up
-- (the invoice keys are derived from the number and share the {bill} slot)
--
-- Every issue counts as a move of the account, so two invoices composed from the same
-- reading (a bill run and a final invoice) cannot both be issued: the second is STALE.
-- The account's unallocated credit pays the new invoice first; a negative invoice adds
-- to the credit, which then pays the oldest open invoices.
-- Reply: {'ISSUED', number, open} | {'ALREADY', number} | {'STALE'} (read again, recompose)

local ba_id = string.sub(KEYS[3], #'{bill}:ba:' + 1)

-- The account's next period to bill moves on once (also when a run is repeated).
local function advance()
  if ARGV[11] ~= '' and redis.call('HGET', KEYS[3], 'next_period') == ARGV[10] then
    redis.call('HSET', KEYS[3], 'next_period', ARGV[11])
    redis.call('ZADD', KEYS[8], ARGV[12], ba_id)
  end
end

local done = redis.call('GET', KEYS[1])
if done then
  advance()
  return {'ALREADY', done}
end
local ba = redis.call('HMGET', KEYS[3], 'moves', 'credit', 'balance')
if tonumber(ba[1] or '0') ~= tonumber(ARGV[4]) then return {'STALE'} end

local seq = redis.call('INCR', KEYS[2])
local number = ARGV[6] .. string.format('%08d', seq)
local doc = string.gsub(ARGV[1], '\1NUMBER\1', number, 1)
local total = tonumber(ARGV[2])
local credit = tonumber(ba[2] or '0')
local open
if total >= 0 then
  local applied = math.min(credit, total)
  open = total - applied
  credit = credit - applied
else
  open = 0
  credit = credit - total
  redis.call('SADD', KEYS[11], ba_id)
  -- The credit pays what is still open, oldest first.
  for _, older in ipairs(redis.call('LRANGE', KEYS[6], 0, -1)) do
    if credit <= 0 then break end
    local key = ARGV[9] .. older
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

redis.call('SET', ARGV[8] .. number, doc)
redis.call('HSET', ARGV[9] .. number, 'ba', ba_id, 'total', ARGV[2],
  'open', string.format('%d', open), 'disputed', '0', 'due', ARGV[3], 'issued', ARGV[7],
  'status', open > 0 and 'OPEN' or 'PAID', 'delivery', 'PENDING')
redis.call('RPUSH', KEYS[5], number)
if open > 0 then redis.call('RPUSH', KEYS[6], number) end
local first = redis.call('LINDEX', KEYS[6], 0)
if first then
  redis.call('ZADD', KEYS[7], redis.call('HGET', ARGV[9] .. first, 'due'), ba_id)
else
  redis.call('ZREM', KEYS[7], ba_id)
end
local taken = tonumber(ARGV[5])
if taken > 0 then redis.call('LTRIM', KEYS[4], taken, -1) end
redis.call('HSET', KEYS[3], 'credit', string.format('%d', credit),
  'balance', string.format('%d', tonumber(ba[3] or '0') + total), 'paid_since', '0', 'credited_since', '0', 'credit_notes_since', '',
  'last_invoice', number)
redis.call('HINCRBY', KEYS[3], 'moves', 1)
if ARGV[13] ~= '' then redis.call('HDEL', KEYS[10], ARGV[13]) end
if tonumber(ARGV[14]) > 0 then redis.call('HSET', KEYS[3], 'deposit', '0') end
redis.call('SET', KEYS[1], number)
redis.call('RPUSH', KEYS[9], number)
advance()
return {'ISSUED', number, string.format('%d', open)}
