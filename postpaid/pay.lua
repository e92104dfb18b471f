-- Money in or out of a billing account, once per key: a payment (allocated to the open
-- invoices oldest first, the rest kept as credit), a credit note against an invoice (its
-- open amount first, the rest as credit) or a refund of credit.
--
-- KEYS[1] record            TAG:pay:CHANNEL:REF, or the credit note's idempotency key
-- KEYS[2] billing account   TAG:ba:BA
-- KEYS[3] open invoices     TAG:ba:BA:open
-- KEYS[4] dunning index     TAG:dunning
-- KEYS[5] credit outbox     TAG:credits (the credit's movement, relayed to PostgreSQL's
--                           credit_movements by postpaid/credit_movements.py)
-- KEYS[6] settled invoices  TAG:settled (an invoice this leaves with nothing open, whose
--                           state postpaid/settled.py drops once PostgreSQL answers for it)
-- (TAG: the hash tag of the account's shard, postpaid/keys.py: every key is in its slot)
--
-- ARGV PayArgs (postpaid/scripts.py), in this order:
--   kind                PAY, CREDIT or REFUND
--   digest              payload digest
--   amount              minor units, > 0
--   at_s                at (s; in the record already)
--   state_prefix        invoice state key prefix "TAG:is:"
--   record              record JSON (channel, reference, reason, ...); \1NUMBER\1 stands
--                       for a credit note's number and \1ALLOCATIONS\1 for the allocations
--                       (control characters never occur in JSON text, so a reference or
--                       reason cannot forge them)
--   max_credit          the most credit the account may hold (minor units)
--   invoice             CREDIT: the invoice it credits
--   release             CREDIT: disputed amount it settles
--   note_number         CREDIT: the credit note's number ("CN-00000001"), taken from its
--                       gapless series in PostgreSQL when the credit note was committed
--   check               '1': decide only (answer {'OK'} or the refusal, change nothing),
--                       before the movement is committed in PostgreSQL; '' applies it
--   settled             CREDIT: '1' when the invoice is settled and its state left Redis:
--                       PostgreSQL bounded the credit note when it committed it
--                       (postpaid/settled.py), so the invoice's state is neither read
--                       nor written here
--   record_ttl_s        the record's expiry (s): the caller deletes it once the outcome is
--                       committed in PostgreSQL (which answers a retry from then on); a
--                       process that dies between the two leaves it to expire
-- The invoice state keys are not in KEYS: they are made here from the prefix and the
-- numbers of the open invoices, which the caller cannot know (the open list is read
-- here). A prefix whose hash tag is not KEYS[2]'s is refused (an error, nothing changed:
-- slot_lib.lua), so every key is in the account's slot.
--
-- A credit note is at most what the invoice has not been credited yet (checked here
-- while the invoice has its state, in PostgreSQL once it is settled); what it does not
-- settle of its invoice pays the other open invoices, oldest first, then stays as credit.
-- A payment or credit note whose rest would take the credit past max_credit changes
-- nothing (LIMIT): the credit, and with it the balance (open invoices less credit), stay
-- in the exact range.
--
-- Reply: {'DONE', record JSON, credit} | {'REPLAY', record JSON} | {'OK'} (check) | {'CONFLICT'}
--        | {'NOCREDIT'} (a refund larger than the credit) | {'NOINVOICE'} | {'LIMIT'}
--        | {'TOOMUCH', creditable} (a credit note above what the invoice can still be credited)

local kind = ARGV[1]
local digest = ARGV[2]
local amount = tonumber(ARGV[3])
local at_s = ARGV[4]
local state_prefix = ARGV[5]
local record = ARGV[6]
local max_credit = tonumber(ARGV[7])
local invoice = ARGV[8]
local release = tonumber(ARGV[9])
local note_number = ARGV[10]
local check = ARGV[11] == '1'
local settled = ARGV[12] == '1'
local record_ttl_s = ARGV[13]

local refused = outside_slot(KEYS[2], state_prefix, 'state_prefix')
if refused then return refused end

local stored = redis.call('GET', KEYS[1])
if stored then
  local sep = string.find(stored, '|', 1, true)
  if string.sub(stored, 1, sep - 1) ~= digest then return {'CONFLICT'} end
  return {'REPLAY', string.sub(stored, sep + 1)}
end

local ba_id = string.sub(KEYS[2], select(2, string.find(KEYS[2], '}:ba:', 1, true)) + 1)
local ba = redis.call('HMGET', KEYS[2], 'credit', 'balance')
local credit, balance = tonumber(ba[1] or '0'), tonumber(ba[2] or '0')
local credit_before = credit
local allocations = {}
local kept = 0  -- what a payment or credit note adds to the credit

local function settle(number, take)
  local key = state_prefix .. number
  local open = tonumber(redis.call('HGET', key, 'open'))
  local t = math.min(open, take)
  if t > 0 then
    open = open - t
    redis.call('HSET', key, 'open', string.format('%d', open))
    if open == 0 then
      redis.call('HSET', key, 'status', 'PAID')
      redis.call('LREM', KEYS[3], 1, number)
      redis.call('SADD', KEYS[6], number)
    end
    allocations[#allocations + 1] = '"' .. number .. '":' .. string.format('%d', t)
  end
  return t
end

if kind ~= 'REFUND' then
  -- What the open invoices (the credited one among them) cannot take stays as credit.
  local owed = 0
  for _, number in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
    owed = owed + tonumber(redis.call('HGET', state_prefix .. number, 'open'))
  end
  if credit + math.max(amount - owed, 0) > max_credit then return {'LIMIT'} end
end
if check and kind == 'PAY' then return {'OK'} end

if kind == 'REFUND' then
  if amount > credit then return {'NOCREDIT'} end
  if check then return {'OK'} end
  credit = credit - amount
  balance = balance + amount
else
  local rest = amount
  if kind == 'CREDIT' and settled then
    if check then return {'OK'} end
    record = string.gsub(record, '\1NUMBER\1', note_number, 1)
  elseif kind == 'CREDIT' then
    local key = state_prefix .. invoice
    local inv = redis.call('HMGET', key, 'total', 'credited')
    if not inv[1] then return {'NOINVOICE'} end
    local creditable = tonumber(inv[1]) - tonumber(inv[2] or '0')
    if amount > creditable then return {'TOOMUCH', string.format('%d', math.max(creditable, 0))} end
    if check then return {'OK'} end
    if release > 0 then
      local disputed = tonumber(redis.call('HGET', key, 'disputed'))
      redis.call('HSET', key, 'disputed', string.format('%d', math.max(disputed - release, 0)))
    end
    rest = rest - settle(invoice, rest)
    record = string.gsub(record, '\1NUMBER\1', note_number, 1)
    redis.call('HINCRBY', key, 'credited', amount)
    if redis.call('HGET', key, 'open') == '0' then redis.call('SADD', KEYS[6], invoice) end
  end
  for _, number in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
    if rest <= 0 then break end
    rest = rest - settle(number, rest)
  end
  kept = math.max(rest, 0)
  credit = credit + rest
  balance = balance - amount
end

-- The credit's movement, in the same script as the change: its id is the record key's
-- (unique per account), so the relay keeps it once.
local movement = string.sub(KEYS[1], select(2, string.find(KEYS[1], '}:', 1, true)) + 1)
local function credit_moved(what, by, source)
  -- Credit held before revision 0014 has no rows: the account's first movement since
  -- records it first ('opening', once: the 'credit_rows' flag; credit_open.lua likewise).
  if redis.call('HSETNX', KEYS[2], 'credit_rows', '1') == 1 and credit_before > 0 then
    redis.call('RPUSH', KEYS[5], cjson.encode({movement = 'opening', kind = 'opening', ba = ba_id,
      source = '', invoice = '', amount = string.format('%d', credit_before), at_s = at_s}))
  end
  redis.call('RPUSH', KEYS[5], cjson.encode({movement = movement, kind = what, ba = ba_id,
    source = source, invoice = invoice, amount = string.format('%d', by), at_s = at_s}))
end
if kind == 'REFUND' then
  credit_moved('refunded', amount, string.sub(movement, 5))
elseif kept > 0 and kind == 'PAY' then
  credit_moved('overpaid', kept, string.sub(movement, 5))
elseif kept > 0 then
  credit_moved('credit_note', kept, note_number)
end

record = string.gsub(record, '\1ALLOCATIONS\1', '{' .. table.concat(allocations, ',') .. '}', 1)
redis.call('SET', KEYS[1], digest .. '|' .. record, 'EX', record_ttl_s)
redis.call('HSET', KEYS[2], 'credit', string.format('%d', credit), 'balance', string.format('%d', balance))
redis.call('HINCRBY', KEYS[2], 'moves', 1)
if kind == 'PAY' then redis.call('HINCRBY', KEYS[2], 'paid_since', amount) end
if kind == 'CREDIT' then
  redis.call('HINCRBY', KEYS[2], 'credited_since', amount)
  -- listed on the next invoice: "number amount invoice;..."
  local listed = redis.call('HGET', KEYS[2], 'credit_notes_since') or ''
  redis.call('HSET', KEYS[2], 'credit_notes_since',
    listed .. note_number .. ' ' .. string.format('%d', amount) .. ' ' .. invoice .. ';')
end
if kind == 'REFUND' then redis.call('HINCRBY', KEYS[2], 'paid_since', -amount) end
local first = redis.call('LINDEX', KEYS[3], 0)
if first then
  redis.call('ZADD', KEYS[4], redis.call('HGET', state_prefix .. first, 'due'), ba_id)
else
  redis.call('ZREM', KEYS[4], ba_id)
end
return {'DONE', record, string.format('%d', credit)}
