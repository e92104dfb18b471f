-- Event-based charging: one debit, refund, balance check or price enquiry, atomically
-- (and a debit the plan rates free: action F).
-- (ledger_lib.lua is prepended.)
--
-- KEYS[1] account hash      {a:ID}
-- KEYS[2] answer            {a:ID}:e:EVENT   (debits, free ones too, and refunds): "digest|body", and
--         for a debit answered 2001 "|" and its refund record (ledger_lib.lua take_refund)
-- KEYS[3] buckets           {a:ID}:bk
-- KEYS[4] outbox            {a:ID}:out
-- KEYS[5] usage aggregates  {a:ID}:u       KEYS[6] usage records  {a:ID}:ud  (postpaid)
-- KEYS[7] a refund's record: the answer of the debit event its token names {a:ID}:e:DEBIT,
--         or the refund records of a session {a:ID}:rf:s:SESSION (a hash by request
--         number); for other actions any key of the account (not touched)
-- KEYS[8] record outbox      {a:ID}:cdr   (usage records and refunds waiting for the relay)
-- KEYS[9..11] for a pool member only: the pool's buckets, account hash and outbox
--
-- ARGV EventArgs (charging/script_args.py), in this order:
--   action              D (direct debit), R (refund), C (check balance), P (price enquiry),
--                       F (a direct debit the plan rates free: answered 4011, nothing taken,
--                       recorded with its cause, its answer kept like a debit's)
--   digest              payload digest
--   identity_field      msisdn or imsi
--   identity_value
--   plan_id             the plan the event was rated with
--   rating_group
--   units               units debited, refunded, checked or priced
--   answer_ttl_s        how long the answer and a debit's refund record are kept
--   max_balance         largest balance allowed (micros)
--   rate
--   unit                unit, service, zone and band, for bucket matching
--   service
--   zone
--   band
--   now_ms              now (ms)
--   low_balance_micros  low balance threshold (0: none)
--   terminating         O (originated by the subscriber) or T (terminating, incoming)
--   roaming             'R' or ''
--   destination         '' none
--   event_id
--   refund_field        a refund of session usage: the request number, the field of
--                       KEYS[7]; '' for a refund of an event (KEYS[7] is its answer)
--   visited_network     MCC+MNC of the serving network ('' unknown), for the usage record
--   actor               who asked (charging/security/identity.py caller_name), for a refund's audit
--   records             1: append a debit's or refund's record to KEYS[8]
--   catalog_version     the catalog version a debit was priced with ('' for a refund), for its record
--
-- A free debit (F) takes nothing whatever the line's state (emergency, toll-free: as a
-- session's rating group answered 4011) and appends a record of layout 'n' (charging/cdrs.py)
-- with the units it states; the relay gives it cost 0 and cause credit_control_not_applicable.
--
-- A postpaid account (with 'bp') records debits and refunds in its bill period
-- (ledger_lib.lua record_usage) and is watched against its credit limit.
--
-- A debit is covered by matching unit buckets first, the rest by money, all or nothing;
-- it keeps its refund record (ledger_lib.lua take_refund) in its answer.
-- A refund gives back at most what the recorded debit took and was not refunded yet, to
-- where it came from, whatever the line's state (it is the operator giving back what was
-- taken, not a service); it is refused (5004, nothing changed) when the record is gone
-- or never was, has no such rating group, or has fewer units left. A postpaid refund
-- records the negative usage in the debit's bill period (the current one once that
-- period is closed).
--
-- Reply, one of:
--   {'DONE', body, outbox length after this script's pushes (0: none),
--    record outbox length after this script's pushes (0: none)}
--        body = "<result code> <balance micros> <available micros> <money charged micros>"
--               and for a refused refund " <field at fault>" (take_refund)
--   {'REPLAY', body}   the event id was applied before with the same payload
--   {'CONFLICT'}       the event id was used before with another payload
--   {'UNKNOWN'}        no such account, or the identity is not on it
--   {'PLAN', id}       the account's plan differs from plan_id: re-rate and retry
--   {'LIMIT'}          a refund would take the balance past max_balance: nothing changed

local action = ARGV[1]
local digest = ARGV[2]
local identity_field = ARGV[3]
local identity_value = ARGV[4]
local plan_id = ARGV[5]
local rating_group = ARGV[6]
local units = tonumber(ARGV[7])
local answer_ttl_s = ARGV[8]
local max_balance = tonumber(ARGV[9])
local rate = ARGV[10]
local unit = ARGV[11]
local service = ARGV[12]
local zone = ARGV[13]
local band = ARGV[14]
local now_ms = tonumber(ARGV[15])
local low_balance_micros = tonumber(ARGV[16])
local terminating = ARGV[17] == 'T'
local roaming = ARGV[18]
local destination = ARGV[19]
local event_id = ARGV[20]
local refund_field = ARGV[21]
local visited_network = ARGV[22]
local actor = ARGV[23]
local records = ARGV[24] == '1'
local catalog_version = ARGV[25]

local writes = action == 'D' or action == 'R' or action == 'F'
local acct = redis.call('HMGET', KEYS[1], 'balance', 'reserved', 'plan', 'status', identity_field, 'low', 'bucket_seq',
  'bp', 'credit_limit', 'cl', 'msisdn', 'imsi')
if writes then
  local stored = stored_answer(KEYS[2], digest)
  if stored then
    -- The caller rebuilds the answer with the plan's rate: make sure it has the plan.
    if acct[1] and acct[3] ~= plan_id then return {'PLAN', acct[3]} end
    -- A debit's refund record follows its body.
    if stored[2] then stored[2] = split(stored[2], '|')[1] end
    return stored
  end
end

if not acct[1] or acct[5] ~= identity_value then return {'UNKNOWN'} end
if acct[3] ~= plan_id then return {'PLAN', acct[3]} end

if action == 'F' then
  local free_balance = tonumber(acct[1])
  local free_body = string.format('4011 %d %d 0', free_balance, free_balance - tonumber(acct[2]))
  if records then
    push_record(KEYS[8], {'n', fmt(now_ms), acct[11] or '', acct[12] or '', plan_id, event_id, rating_group, service,
      destination, zone, band, visited_network, roaming, unit, fmt(units), catalog_version})
  end
  redis.call('SET', KEYS[2], digest .. '|' .. free_body, 'EX', answer_ttl_s)
  return {'DONE', free_body, fmt(pushed), fmt(recorded)}
end

local home = {KEYS[3], KEYS[1], KEYS[4]}
local pool = nil
if KEYS[9] then pool = {KEYS[9], KEYS[10], KEYS[11]} end
local balance = tonumber(acct[1])
local reserved = tonumber(acct[2])
local now_s = floor_div(now_ms, 1000)
local rc = 2001
local charged = 0
local buckets = nil
local failed = nil
local record, refunded, lost, debit_answer = nil, nil, nil, nil
local paid_by = ''

if action == 'D' or action == 'C' then
  local r = parse_rate(rate)
  buckets = load_buckets(home, pool, acct[7])
  local usable = matching(buckets, now_s, unit, service, zone, band)
  local need = billable(r, units)
  local from_buckets = 0
  for _, b in ipairs(usable) do from_buckets = from_buckets + math.max(b.amount - b.reserved, 0) end
  if from_buckets > need then from_buckets = need end
  charged = session_cost(r, need - from_buckets)
  local status = acct[4]
  if not (status == 'active' or (status == 'barred_outgoing' and terminating)) then
    rc = 4010
  elseif balance - reserved < charged then
    rc = 4012
  elseif action == 'D' then
    local _, taken = consume(usable, from_buckets)
    paid_by = taken
    balance = balance - charged
    record = refund_entry(rating_group, unit, service, zone, band, roaming, now_s,
      {refund_part(rate, 0, 0, units, need - from_buckets, taken)})
  end
  if action == 'C' then buckets = nil end
elseif action == 'R' then
  local stored_record
  if refund_field == '' then
    -- "digest|body|record": the record is what follows the second '|'.
    local prev = redis.call('GET', KEYS[7])
    local at = prev and string.find(prev, '|', 1, true)
    at = at and string.find(prev, '|', at + 1, true)
    if at then stored_record, debit_answer = string.sub(prev, at + 1), string.sub(prev, 1, at) end
  else
    stored_record = redis.call('HGET', KEYS[7], refund_field)
  end
  if not stored_record then
    rc, failed = 5004, 'refund_information'
  else
    buckets = load_buckets(home, pool, acct[7])
    local money, out, entry, gone, returned = take_refund(stored_record, rating_group, unit, units, buckets, now_s,
      home, pool)
    if not money then
      rc, failed, buckets = 5004, out, nil
    else
      if balance + money > max_balance then return {'LIMIT'} end
      balance = balance + money
      charged = -money
      record, refunded, lost = out, entry, gone
      paid_by = returned  -- a refund's record names the units it gave back to each bucket
    end
  end
end

local body = string.format('%d %d %d %d', rc, balance, balance - reserved, charged)
if failed then body = body .. ' ' .. failed end
if writes then
  if rc == 2001 then
    redis.call('HSET', KEYS[1], 'balance', fmt(balance))
    if buckets then save_buckets(buckets, now_s, now_ms) end
    if action == 'R' then
      count_expired(lost, unit)
      if refund_field == '' then
        redis.call('SET', KEYS[7], debit_answer .. record, 'KEEPTTL')
      else
        redis.call('HSET', KEYS[7], refund_field, record)
      end
    end
    if records then
      -- A debit as rated; a refund as the debit's service, zone and band with the money
      -- given back (negative), naming who asked and which debit's record it drew on.
      local r_service, r_zone, r_band, r_roaming, of = service, zone, band, roaming, ''
      if refunded then
        r_service, r_zone, r_band, r_roaming = refunded.service, refunded.zone, refunded.band, refunded.roaming
        of = string.sub(KEYS[7], #KEYS[1] + 2) .. (refund_field ~= '' and ('#' .. refund_field) or '')
      end
      push_record(KEYS[8], {action == 'R' and 'r' or 'd', fmt(now_ms), acct[11] or '', acct[12] or '', plan_id, event_id,
        rating_group, r_service, destination, r_zone, r_band, visited_network, r_roaming, unit, fmt(units),
        fmt(charged), paid_by, action == 'R' and actor or '', of, catalog_version})
    end
    if acct[8] then
      local u = {service = service, zone = zone, band = band, roaming = roaming, destination = destination,
                 units = units, cost = charged, ref = event_id}
      local at_s = now_s
      if refunded then
        -- The reverse of the debit's usage: same aggregate, negative units and cost.
        u.service, u.zone, u.band, u.roaming, u.units = refunded.service, refunded.zone, refunded.band,
          refunded.roaming, -units
        at_s = refunded.at_s
      end
      record_usage(KEYS[5], KEYS[6], acct[8], at_s, now_ms, u)
      watch_credit(KEYS[1], KEYS[4], tonumber(acct[9] or '0'), tonumber(acct[10] or '0'), balance, now_ms)
    else
      watch_balance(KEYS[1], KEYS[4], acct[6] == '1', balance, low_balance_micros, now_ms)
    end
  end
  -- A debit keeps its refund record with its answer: as long as its event id, one key.
  local kept = record and action == 'D' and ('|' .. record) or ''
  redis.call('SET', KEYS[2], digest .. '|' .. body .. kept, 'EX', answer_ttl_s)
end
return {'DONE', body, fmt(pushed), fmt(recorded)}
