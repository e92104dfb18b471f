-- Session-based charging: one INITIAL, UPDATE or TERMINATE request, atomically.
-- (ledger_lib.lua is prepended: rates, buckets, notifications.)
--
-- KEYS[1] account hash      {a:ID}
-- KEYS[2] open sessions     {a:ID}:sx      (zset session id -> deadline ms)
-- KEYS[3] session hash      {a:ID}:s:SESSION
-- KEYS[4] answer            {a:ID}:r:N:SESSION
-- KEYS[5] buckets           {a:ID}:bk
-- KEYS[6] outbox            {a:ID}:out     (notifications waiting to be relayed)
-- KEYS[7] usage aggregates  {a:ID}:u       KEYS[8] usage records  {a:ID}:ud  (postpaid)
-- KEYS[9] refund records    {a:ID}:rf:s:SESSION  (hash: request number -> ledger_lib.lua take_refund)
-- KEYS[10] record outbox     {a:ID}:cdr     (usage records waiting for the relay to PostgreSQL)
-- KEYS[11..13] for a pool member only: the pool's buckets, account hash and outbox
--
-- ARGV SessionArgs (charging/script_args.py), in this order:
--   now_ms              now (ms)
--   kind                request type: I, U or T
--   session_id
--   request_number
--   digest              payload digest
--   identity_field      msisdn or imsi
--   identity_value
--   plan_id             the plan the request was rated with
--   answer_ttl_s        how long the answer is kept for retransmissions
--   supervision_ms      supervision time
--   catalog_version     the catalog version the request was rated with
--   low_balance_micros  low balance threshold (0: none)
--   terminating         O (originated by the subscriber) or T (terminating, incoming)
--   destination         the called party ('' none: recorded with postpaid usage)
--   overrun_floor       micros: usage is billed while the account's available money
--                       (balance - reserved) stays at or above -overrun_floor
--   refund_ttl_s        how long the refund records of the session are kept
--   visited_network     MCC+MNC of the serving network ('' unknown), for the usage records
--   records             1: append a usage record per rating group with usage to KEYS[10]
--   groups              the number n of rating groups, then n times RatingGroupArgs:
-- ARGV RatingGroupArgs, 17 values per rating group:
--   rating_group
--   preset_code         a result code decided by the caller, 0: rate it
--   want                units wanted (0: no new grant)
--   final               1: release this rating group
--   validity_s          validity time of a grant
--   tariff_change_s     tariff change time (s, 0 none)
--   used_before         used units before the tariff change
--   rate_before         their rate
--   used_after          used units after it
--   rate_after          their rate
--   sizing_rate         the rate that sizes the new grant
--   unit                1 time, 2 volume, 3 service-specific, 4 money
--   service             service, zone and band, for bucket matching
--   zone
--   band
--   roaming             'R' or ''
--   split_at_s          the tariff change rate_before and rate_after are the rates around
--                       (s, 0: the caller found none)
--
-- A postpaid account (with 'bp') records each rating group's usage and cost in its bill
-- period (ledger_lib.lua record_usage) and is watched against its credit limit.
--
-- Usage and grants are covered by matching unit buckets first (in billable units, i.e.
-- rounded to the rate's increments), the rest by money at the rate's price. What the
-- usage of each rating group took is the request's refund record (its answer carries the
-- token, charging/refunds.py).
--
-- Usage that would take the available money below -overrun_floor, or a rating group's
-- usage or cost in the session past MAX_UNITS or MAX_AMOUNT (ledger_lib.lua), is not
-- billed: it is unbilled overrun, counted on the account ('unbilled_<unit>', in the rate's
-- units rounded up to its increments) and notified ('unbilled_overrun'), and the session
-- ends with 4012. So balance, reserved and every session counter stay in the bounds that
-- charging/money.py states.
--
-- The command-level result and whether the session ends: command_result below, the
-- same rule as charging/sessions.py command_result.
--
-- Reply, one of:
--   {'DONE', body, reserved_delta, session_delta, outbox length after this script's pushes (0: none),
--    unbilled overrun "<unit>:<units>|..." ('' none), record outbox length after this script's pushes (0: none)}
--                             first execution, body stored as answer
--   {'REPLAY', body}          same request number and payload seen before
--   {'CONFLICT'}              same request number, different payload: nothing changed
--   {'UNKNOWN'}               no such account, or the identity is not on it
--   {'PLAN', plan_id}         the account's plan differs from plan_id: re-rate and retry
--   {'CATALOG', version}      the session is rated with another catalog version: re-rate
--   {'TARIFF', "<rating group>:<change s> ..."}
--                             a split report's split_at_s is not the tariff change the session
--                             announced with that rating group's grant: nothing changed; price
--                             the split around the change named and retry
-- body = "<command result code> <plan id>" then per rating group
--        " <result code>,<granted units>,<cost micros>,<validity s>,<final unit 0|1>,<tariff change s>"

local now_ms = tonumber(ARGV[1])
local kind = ARGV[2]
local session_id = ARGV[3]
local request_number = tonumber(ARGV[4])
local digest = ARGV[5]
local identity_field = ARGV[6]
local identity_value = ARGV[7]
local plan_id = ARGV[8]
local answer_ttl_s = ARGV[9]
local supervision_ms = tonumber(ARGV[10])
local catalog_version = ARGV[11]
local low_balance_micros = tonumber(ARGV[12])
local terminating = ARGV[13] == 'T'
local destination = ARGV[14]
local overrun_floor = tonumber(ARGV[15])
local refund_ttl_s = ARGV[16]
local visited_network = ARGV[17]
local records = ARGV[18] == '1'

-- Rating group i (1-based) of the request, by the names of RatingGroupArgs.
local function group(i)
  local j = 17 * i + 3
  return {rating_group = ARGV[j], preset_code = tonumber(ARGV[j + 1]), want = tonumber(ARGV[j + 2]),
          final = ARGV[j + 3] == '1', validity_s = tonumber(ARGV[j + 4]), tariff_change_s = ARGV[j + 5],
          used_before = tonumber(ARGV[j + 6]), rate_before = ARGV[j + 7], used_after = tonumber(ARGV[j + 8]),
          rate_after = ARGV[j + 9], sizing_rate = ARGV[j + 10], unit = ARGV[j + 11], service = ARGV[j + 12],
          zone = ARGV[j + 13], band = ARGV[j + 14], roaming = ARGV[j + 15], split_at_s = ARGV[j + 16]}
end
local groups = {}
for i = 1, tonumber(ARGV[19]) do groups[i] = group(i) end

local acct = redis.call('HMGET', KEYS[1], 'balance', 'reserved', 'plan', 'status', identity_field, 'low', 'bucket_seq',
  'bp', 'credit_limit', 'cl', 'msisdn', 'imsi')
local stored = stored_answer(KEYS[4], digest)
if stored then
  -- The caller rebuilds the answer with the plan's rates: make sure it has the plan.
  if acct[1] and acct[3] ~= plan_id then return {'PLAN', acct[3]} end
  return stored
end
if not acct[1] or acct[5] ~= identity_value then return {'UNKNOWN'} end
if acct[3] ~= plan_id then return {'PLAN', acct[3]} end

local now_s = floor_div(now_ms, 1000)
-- The line's state: active lines get everything; barred-outgoing lines only incoming
-- (terminating) usage; suspended or barred lines nothing. Free rates (emergency) are
-- preset 4011 by the caller and pass whatever the state.
local status = acct[4]
local active = status == 'active' or (status == 'barred_outgoing' and terminating)
local balance = tonumber(acct[1])
local reserved = tonumber(acct[2])
local reserved_before = reserved

local home = {KEYS[5], KEYS[1], KEYS[6]}
local pool = nil
if KEYS[11] then pool = {KEYS[11], KEYS[12], KEYS[13]} end

local function finish(body, session_delta, unbilled)
  redis.call('SET', KEYS[4], digest .. '|' .. body, 'EX', answer_ttl_s)
  return {'DONE', body, fmt(reserved - reserved_before), fmt(session_delta), fmt(pushed), unbilled or '',
          fmt(recorded)}
end

-- The command-level result code and whether the session ends (charging/sessions.py
-- command_result): an UPDATE fails only when the session cannot go on.
local function command_result(codes, held_after, limit_reached)
  if limit_reached then return 4012, true end
  if kind == 'U' then
    for _, c in ipairs(codes) do if c == 4010 then return 4010, true end end
    if not held_after then
      for _, c in ipairs(codes) do if c == 4012 then return 4012, true end end
    end
    return 2001, false
  end
  local any_ok, free_only = false, true
  for _, c in ipairs(codes) do
    if c == 2001 or c == 4011 then any_ok = true end
    if c ~= 4011 then free_only = false end
  end
  local code = 2001
  if #codes > 0 and not any_ok then
    code = codes[1]
  elseif #codes > 0 and free_only then
    -- Nothing here is credit-controlled (emergency, toll-free): RFC 8506 4011, and an
    -- INITIAL opens no session the client would have to keep reporting on.
    code = 4011
  end
  return code, kind == 'T' or code ~= 2001
end

local exists = redis.call('EXISTS', KEYS[3]) == 1
if kind == 'I' then
  if exists then return finish('5012 ' .. plan_id, 0) end
elseif not exists then
  return finish('5002 ' .. plan_id, 0)
end

local s = {}
if exists then
  local flat = redis.call('HGETALL', KEYS[3])
  for i = 1, #flat, 2 do s[flat[i]] = flat[i + 1] end
  -- Prices stay those of the catalog the session started with.
  if s['cv'] and s['cv'] ~= catalog_version then return {'CATALOG', s['cv']} end
else
  s['cv'] = catalog_version
end

-- A report split around a tariff change is priced at the change the session announced
-- with the grant (t<rg>), not at the one the caller's clock finds now: that clock may
-- have jumped since, or the report come late, past another change or past every one.
-- When they differ nothing changes here and the caller prices the split again around the
-- announced change. No announcement stored ('0' or none: a grant that announced none, or
-- one made before t<rg> was kept) leaves the split as the caller made it. Only the newest
-- request is held to it: an older one reported on an earlier grant.
local announced = {}
for _, g in ipairs(groups) do
  local rg = g.rating_group
  local t = s['t' .. rg]
  if g.preset_code == 0 and g.used_after > 0 and t and t ~= '0' and t ~= g.split_at_s
      and request_number > tonumber(s['n' .. rg] or '-1') then
    announced[#announced + 1] = rg .. ':' .. t
  end
end
if #announced > 0 then return {'TARIFF', table.concat(announced, ' ')} end

local buckets = load_buckets(home, pool, acct[7])
local refunds = {}
local parts = {}
local codes = {}
-- Usage went past the overrun floor or a session maximum: the session ends.
local limit_reached = false
local unbilled = {}
for _, g in ipairs(groups) do
  local rg = g.rating_group
  local rc = g.preset_code
  local want = g.want
  local used_a, used_b = g.used_before, g.used_after
  local used = used_a + used_b
  local granted, cost, fui, vt_out, tct_out = 0, 0, 0, 0, '0'
  if rc == 0 then
    rc = 2001
    local r = parse_rate(g.sizing_rate)
    local r_units = tonumber(s['u' .. rg] or '0')
    local r_money = tonumber(s['m' .. rg] or '0')
    local cum = tonumber(s['c' .. rg] or '0')
    local k = tonumber(s['k' .. rg] or s['c' .. rg] or '0')
    local r_no = tonumber(s['n' .. rg] or '-1')
    local record = s['b' .. rg] or ''
    local usable = matching(buckets, now_s, g.unit, g.service, g.zone, g.band, held_ids(record))
    local overrun = r_no >= 0 and used > r_units
    -- A late, older request reports its usage but leaves the newer reservation alone.
    local newest = request_number >= r_no
    if newest then
      -- Release this rating group's reservations first: its usage may draw on them.
      reserved = reserved - r_money
      release(buckets, record)
      r_units, r_money, record = 0, 0, ''
    end
    local refund_parts = {}
    local paid_by = {}
    local stopped = false
    for n, part in ipairs({{used_a, g.rate_before}, {used_b, g.rate_after}}) do
      if part[1] > 0 then
        local rp = parse_rate(part[2])
        if n == 2 and part[2] ~= g.rate_before and not stopped
            and k == billable(parse_rate(g.rate_before), cum) then
          -- At the tariff change, when money has paid all of the usage so far (no bucket
          -- gave any), the money counter moves onto the new rate's increments: priced
          -- as rating.py prices it. (Left on the old rate's, the new rate's first
          -- increment counted as paid.) After buckets gave units the counter stays.
          k = billable(rp, cum)
        end
        local need = billable(rp, cum + part[1]) - billable(rp, cum)
        local money_units, billed, taken = need, 0, ''
        local cum0, k0 = cum, k
        if not stopped and cum + part[1] <= MAX_UNITS and k + need <= MAX_UNITS then
          local covered
          covered, taken = consume(usable, need)
          money_units = need - covered
          billed = money_units
          -- What this usage may still take: down to -overrun_floor available money
          -- (this rating group's own reservation is back in it by now).
          local budget = balance - cost - reserved + overrun_floor
          if not priceable(rp, k + money_units) then
            billed = 0
          elseif session_cost(rp, k + money_units) - session_cost(rp, k) > budget then
            billed = affordable(rp, k, budget, money_units)
          end
          cost = cost + session_cost(rp, k + billed) - session_cost(rp, k)
          k = k + billed
          cum = cum + part[1]
        end
        -- What it took, for refunds: units not billed give nothing back (refunds.give_back).
        refund_parts[#refund_parts + 1] = refund_part(part[2], cum0, k0, part[1], billed, taken)
        if taken ~= '' then paid_by[#paid_by + 1] = taken end
        if billed < money_units then
          stopped = true
          unbilled[g.unit] = (unbilled[g.unit] or 0) + money_units - billed
        end
      end
    end
    if stopped then limit_reached = true end
    balance = balance - cost
    record_usage(KEYS[7], KEYS[8], acct[8], now_s, now_ms, {service = g.service, zone = g.zone, band = g.band,
      roaming = g.roaming, destination = destination, units = used, cost = cost, ref = session_id})
    if used > 0 and records then
      push_record(KEYS[10], {'s', fmt(now_ms), acct[11] or '', acct[12] or '', plan_id, catalog_version, session_id,
        fmt(request_number), rg, g.service, destination, g.zone, g.band, visited_network, g.roaming, g.unit, fmt(used),
        fmt(cost), table.concat(paid_by, '|')})
    end
    if used > 0 then
      refunds[#refunds + 1] = refund_entry(rg, g.unit, g.service, g.zone, g.band, g.roaming, now_s, refund_parts)
    end
    if stopped then
      rc = 4012
    elseif newest then
      if overrun then
        rc = 4012
      elseif kind ~= 'T' and not g.final and want > 0 then
        local need = billable(r, cum + want) - billable(r, cum)
        if not active then
          rc = 4010
        elseif cum + want > MAX_UNITS or not priceable(r, k + need) then
          -- The rating group has reached the most one session may use or cost.
          rc = 4012
        else
          local paid_rest = billable(r, cum) - cum
          local covered, taken, earliest = reserve(usable, need, now_s)
          local money_units = affordable(r, k, balance - reserved, need - covered)
          local got = math.min(want, paid_rest + covered + money_units)
          if got <= 0 then
            rc = 4012
          else
            if got < want then fui = 1 end
            r_money = session_cost(r, k + money_units) - session_cost(r, k)
            r_units, record = got, taken
            reserved = reserved + r_money
            granted, vt_out, tct_out = got, g.validity_s, g.tariff_change_s
            -- Units from a bucket are valid only until the bucket expires.
            if earliest > 0 and earliest - now_s < vt_out then vt_out = math.max(earliest - now_s, 1) end
          end
        end
      end
    end
    if newest then
      s['n' .. rg] = fmt(request_number)
      s['t' .. rg] = tct_out
    end
    s['u' .. rg] = fmt(r_units)
    s['m' .. rg] = fmt(r_money)
    s['c' .. rg] = fmt(cum)
    s['k' .. rg] = fmt(k)
    s['b' .. rg] = record
  elseif rc == 4011 and used > 0 and records then
    -- Not credit-controlled (emergency, toll-free): the usage reported is recorded at no
    -- cost, its cause named by the layout ('f', charging/cdrs.py).
    push_record(KEYS[10], {'f', fmt(now_ms), acct[11] or '', acct[12] or '', plan_id, catalog_version, session_id,
      fmt(request_number), rg, g.service, destination, g.zone, g.band, visited_network, g.roaming, g.unit, fmt(used)})
  end
  codes[#codes + 1] = rc
  parts[#parts + 1] = table.concat({fmt(rc), fmt(granted), fmt(cost), fmt(vt_out), fmt(fui), tct_out}, ',')
end

local held_after = false
for f, v in pairs(s) do
  if string.match(f, '^u%d+$') and tonumber(v) > 0 then held_after = true end
end
local cmd, ends = command_result(codes, held_after, limit_reached)

local unbilled_list = {}
for unit, units in pairs(unbilled) do
  add_total(KEYS[1], 'unbilled_' .. unit, units)
  notify(KEYS[6], 'unbilled_overrun - ' .. unit .. ' ' .. fmt(units) .. ' ' .. fmt(now_ms))
  unbilled_list[#unbilled_list + 1] = unit .. ':' .. fmt(units)
end

local session_delta = 0
if ends then
  -- The session ends: release whatever this request did not already release.
  for f, v in pairs(s) do
    local counter = string.sub(f, 1, 1)
    if counter == 'm' then
      reserved = reserved - tonumber(v)
    elseif counter == 'b' then
      release(buckets, v)
    end
  end
  if exists then
    redis.call('DEL', KEYS[3])
    redis.call('ZREM', KEYS[2], session_id)
    session_delta = -1
  end
else
  local deadline = now_ms + supervision_ms
  s['dl'] = fmt(deadline)
  local flat = {}
  for f, v in pairs(s) do flat[#flat + 1] = f; flat[#flat + 1] = v end
  redis.call('HSET', KEYS[3], unpack(flat))
  redis.call('ZADD', KEYS[2], deadline, session_id)
  if not exists then session_delta = 1 end
end

redis.call('HSET', KEYS[1], 'balance', fmt(balance), 'reserved', fmt(reserved))
if #refunds > 0 then
  redis.call('HSET', KEYS[9], fmt(request_number), table.concat(refunds, ' '))
  redis.call('EXPIRE', KEYS[9], refund_ttl_s)
end
save_buckets(buckets, now_s, now_ms)
if acct[8] then
  watch_credit(KEYS[1], KEYS[6], tonumber(acct[9] or '0'), tonumber(acct[10] or '0'), balance, now_ms)
else
  watch_balance(KEYS[1], KEYS[6], acct[6] == '1', balance, low_balance_micros, now_ms)
end
return finish(fmt(cmd) .. ' ' .. plan_id .. (#parts > 0 and ' ' or '') .. table.concat(parts, ' '), session_delta,
  table.concat(unbilled_list, '|'))
