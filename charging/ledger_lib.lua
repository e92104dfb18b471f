-- Shared functions, prepended to the ledger scripts (session, event, topup, buy, sweep)
-- and to postpaid/close.lua when they load.
--
-- Rates: a rate is "increment,price,connect fee,first increment,first price,minimum,cap"
-- (micros; cap 0: none); session_cost and affordable mirror charging/rating.py.
-- Buckets: the hash {a:ID}:bk maps a bucket id to
-- "unit,amount,reserved,start s,expiry s,priority,initial,notified %,services,zones,bands"
-- where the lists are '|'-separated names and an empty list matches anything. A pool
-- member also draws on its pool's buckets: those are keyed '^' .. id in memory (and in
-- reservation records) and written back to the pool, whose outbox hears about them.

local function ceil_div(a, b)
  local q = math.floor(a / b)
  if q * b < a then q = q + 1 end
  if (q - 1) * b >= a then q = q - 1 end
  return q
end

local function floor_div(a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 end
  if (q + 1) * b <= a then q = q + 1 end
  return q
end

local function fmt(n) return string.format('%d', n) end

-- charging/money.py MAX_UNITS and MAX_AMOUNT: the most one rating group of one session
-- may use (units) and cost (micros) in total, so every counter stays exact (< 2^53).
local MAX_UNITS = 1000000000000000
local MAX_AMOUNT = 1000000000000000
-- 2^53 - 1: every integer up to it is exact in a Lua number (a double).
local MAX_EXACT = 9007199254740991

-- Length of an outbox after this script's last push to it (0: nothing pushed). A reply
-- carries it so the caller relays only when there is something new.
local pushed = 0

local function notify(outbox, text)
  pushed = redis.call('RPUSH', outbox, text)
end

-- Usage records and money movements (charging/cdrs.py reads them): a script that rates a
-- use or moves money appends one JSON array per record to the account's record outbox
-- {a:ID}:cdr (push_record), in the same script as the change, so the change and its record happen
-- together or not at all; charging/cdr_relay.py moves them to PostgreSQL. Every value is
-- a string: cjson writes numbers with 14 significant digits. The first value is the kind
-- of record and fixes the layout of the rest (cdrs.py LAYOUTS).
-- Length of the record outbox after this script's last push (0: nothing pushed).
local recorded = 0

local function push_record(outbox, fields)
  recorded = redis.call('RPUSH', outbox, cjson.encode(fields))
end

-- Add n (>= 0) to a running total on the account that no script computes with (units
-- expired, units of unbilled overrun). It stops at MAX_EXACT rather than leave the exact
-- range: a total there means "at least this much"; the notifications carry every amount.
local function add_total(key, field, n)
  local total = tonumber(redis.call('HGET', key, field) or '0')
  if total + n > MAX_EXACT then
    redis.call('HSET', key, field, fmt(MAX_EXACT))
  else
    redis.call('HINCRBY', key, field, fmt(n))
  end
end

local function split(text, sep)
  local out, start = {}, 1
  while true do
    local at = string.find(text, sep, start, true)
    if not at then
      out[#out + 1] = string.sub(text, start)
      return out
    end
    out[#out + 1] = string.sub(text, start, at - 1)
    start = at + 1
  end
end

-- A stored answer "digest|body" under key: nil when there is none, else the reply to
-- give: {'REPLAY', body} for the same payload, {'CONFLICT'} for another one.
local function stored_answer(key, digest)
  local prev = redis.call('GET', key)
  if not prev then return nil end
  local sep = string.find(prev, '|', 1, true)
  if string.sub(prev, 1, sep - 1) ~= digest then return {'CONFLICT'} end
  return {'REPLAY', string.sub(prev, sep + 1)}
end

local function parse_rate(text)
  local v = split(text, ',')
  return {inc = tonumber(v[1]), price = tonumber(v[2]), connect = tonumber(v[3]), first = tonumber(v[4]),
          first_price = tonumber(v[5]), min = tonumber(v[6]), cap = tonumber(v[7])}
end

local function session_cost(r, u)
  if u <= 0 then return 0 end
  local rest = u - r.first
  if rest < 0 then rest = 0 end
  local total = r.connect + r.first_price + ceil_div(rest, r.inc) * r.price
  if total < r.min then total = r.min end
  if r.cap > 0 and total > r.cap then total = r.cap end
  return total
end

-- Whether session_cost(r, u) is exact and at most MAX_AMOUNT: a capped rate always is;
-- otherwise its upper bound rating.py worst_case_cost must be (safe to compare however
-- large: doubles round monotonically).
local function priceable(r, u)
  return r.cap > 0 or r.connect + r.first_price + r.min + (ceil_div(u, r.inc) + 1) * r.price <= MAX_AMOUNT
end

-- Units rounded up to the rate's increments (what a bundle gives up for them).
local function billable(r, u)
  if u <= 0 then return 0 end
  if u <= r.first then return r.first end
  return r.first + ceil_div(u - r.first, r.inc) * r.inc
end

local function affordable(r, before, avail, want)
  if want <= 0 then return 0 end
  if avail < 0 then avail = 0 end
  local budget = session_cost(r, before) + avail
  if r.cap > 0 and r.cap <= budget then return want end
  local entry = r.connect + r.first_price
  if entry < r.min then entry = r.min end
  if before == 0 and budget < entry then return 0 end
  if r.price == 0 then return want end
  local reach = r.first + floor_div(budget - r.connect - r.first_price, r.price) * r.inc
  local g = reach - before
  if g > want then g = want end
  if g < 0 then g = 0 end
  return g
end

-- Buckets ------------------------------------------------------------------------

local function parse_bucket(id, text)
  local v = split(text, ',')
  return {id = id, raw = id, unit = v[1], amount = tonumber(v[2]), reserved = tonumber(v[3]), start = tonumber(v[4]),
          expiry = tonumber(v[5]), priority = tonumber(v[6]), initial = tonumber(v[7]), notified = tonumber(v[8]),
          services = v[9], zones = v[10], bands = v[11], dirty = false}
end

local function pack_bucket(b)
  return table.concat({b.unit, fmt(b.amount), fmt(b.reserved), fmt(b.start), fmt(b.expiry), fmt(b.priority),
                       fmt(b.initial), fmt(b.notified), b.services, b.zones, b.bands}, ',')
end

-- home = {buckets key, account key, outbox key}; pool = the same for the pool, or nil.
-- An account that never bought a bundle (no bucket_seq) and is in no pool has none.
local function load_buckets(home, pool, ever_bought)
  local all = {}
  if not ever_bought and not pool then return all end
  for _, place in ipairs({home, pool}) do
    local mark = (place == pool) and '^' or ''
    local flat = redis.call('HGETALL', place[1])
    for i = 1, #flat, 2 do
      local b = parse_bucket(mark .. flat[i], flat[i + 1])
      b.raw, b.home = flat[i], place
      all[b.id] = b
    end
  end
  return all
end

local function listed(list, name)
  return list == '' or string.find('|' .. list .. '|', '|' .. name .. '|', 1, true) ~= nil
end

-- Usable buckets for a unit, service, zone and band, in consumption order:
-- priority (lower first), then earliest expiry, then id. ``held`` names buckets the
-- caller holds a reservation on: usage within that grant may still draw on them after
-- they expired.
local function matching(all, now_s, unit, service, zone, band, held)
  local out = {}
  for _, b in pairs(all) do
    local live = b.start <= now_s and (now_s < b.expiry or (held and held[b.id]))
    if b.unit == unit and live and listed(b.services, service)
        and listed(b.zones, zone) and listed(b.bands, band) then
      out[#out + 1] = b
    end
  end
  -- A pool member's own buckets come before its pool's ('^' ids), each in priority,
  -- expiry, id order (buckets.py consumption_order is the reference).
  table.sort(out, function(x, y)
    local x_pool, y_pool = x.id:sub(1, 1) == '^', y.id:sub(1, 1) == '^'
    if x_pool ~= y_pool then return y_pool end
    if x.priority ~= y.priority then return x.priority < y.priority end
    if x.expiry ~= y.expiry then return x.expiry < y.expiry end
    return x.id < y.id
  end)
  return out
end

-- One "<bucket id>:<units>" item of a reservation or refund record: the bucket id and
-- the units. Split at the last ':': bundle ids of older catalogs may hold ':'.
local function bucket_item(item)
  local at = string.find(item, ':[^:]*$')
  return string.sub(item, 1, at - 1), tonumber(string.sub(item, at + 1))
end

-- The bucket ids of a reservation record, as a set.
local function held_ids(record)
  local ids = {}
  if record ~= '' then
    for _, item in ipairs(split(record, '|')) do ids[(bucket_item(item))] = true end
  end
  return ids
end

-- Take up to need units out of the buckets' unreserved amounts; returns the units taken
-- and "id:n|id:n" of what each bucket gave (for the refund record).
local function consume(list, need)
  local covered, taken = 0, {}
  for _, b in ipairs(list) do
    if need <= covered then break end
    local t = math.min(b.amount - b.reserved, need - covered)
    if t > 0 then
      b.amount = b.amount - t
      b.dirty = true
      covered = covered + t
      taken[#taken + 1] = b.id .. ':' .. fmt(t)
    end
  end
  return covered, table.concat(taken, '|')
end

-- Reserve up to need units of buckets still valid at now_s; returns the units reserved,
-- a record "id:n|id:n" and the earliest expiry among them (0 if none).
local function reserve(list, need, now_s)
  local covered, record, earliest = 0, {}, 0
  for _, b in ipairs(list) do
    if need <= covered then break end
    local t = math.min(b.amount - b.reserved, need - covered)
    if t > 0 and now_s < b.expiry then
      b.reserved = b.reserved + t
      b.dirty = true
      covered = covered + t
      record[#record + 1] = b.id .. ':' .. fmt(t)
      if earliest == 0 or b.expiry < earliest then earliest = b.expiry end
    end
  end
  return covered, table.concat(record, '|'), earliest
end

local function release(all, record)
  if record == nil or record == '' then return end
  for _, item in ipairs(split(record, '|')) do
    local id, units = bucket_item(item)
    local b = all[id]
    if b then
      b.reserved = math.max(b.reserved - units, 0)
      b.dirty = true
    end
  end
end

-- Write changed buckets back; record expired amounts and usage levels (80%, 100%) once
-- per crossing in the outbox of the account that owns the bucket.
local function save_buckets(all, now_s, now_ms)
  for _, b in pairs(all) do
    local key, acct_key, outbox = b.home[1], b.home[2], b.home[3]
    if b.expiry <= now_s and b.reserved == 0 then
      if b.amount > 0 then
        add_total(acct_key, 'expired_' .. b.unit, b.amount)
        notify(outbox, 'bundle_expired ' .. b.raw .. ' ' .. b.unit .. ' ' .. fmt(b.amount) .. ' ' .. fmt(now_ms))
      end
      redis.call('HDEL', key, b.raw)
    elseif b.dirty then
      if b.initial > 0 then
        -- used >= 80 % of initial, without a product past 2^53: used >= initial - floor(initial / 5)
        local used = b.initial - b.amount
        local level = 0
        if used >= b.initial then level = 100 elseif used >= b.initial - floor_div(b.initial, 5) then level = 80 end
        if level > b.notified then
          notify(outbox, 'bundle_' .. fmt(level) .. ' ' .. b.raw .. ' ' .. b.unit .. ' ' .. fmt(b.amount) .. ' ' .. fmt(now_ms))
          b.notified = level
        end
      end
      redis.call('HSET', key, b.raw, pack_bucket(b))
    end
  end
end

-- Low money balance: notify once when the balance falls below the threshold, and again
-- only after it has been above it.
local function watch_balance(acct_key, outbox, was_low, balance, threshold, now_ms)
  if threshold <= 0 then return end
  if balance < threshold and not was_low then
    redis.call('HSET', acct_key, 'low', '1')
    notify(outbox, 'low_balance - money ' .. fmt(balance) .. ' ' .. fmt(now_ms))
  elseif balance >= threshold and was_low then
    redis.call('HDEL', acct_key, 'low')
  end
end

-- Postpaid usage and credit --------------------------------------------------------
-- A postpaid account has 'bp': its open bill periods "id:end s|id:end s|..." (the current
-- one first, postpaid/periods.py). Its 'balance' is the headroom: credit limit minus
-- unbilled usage minus overdue invoices. Every debit is recorded, in the script that
-- makes it, in the period containing it: an aggregate in the hash ACCOUNT:u (field
-- "<period>|<service>|<zone>|<band>|<roaming R or empty>" -> "units,cost micros,records")
-- and an itemised record at the end of the list ACCOUNT:ud
-- ("<period>,<time ms>,<service>,<zone>,<band>,<roaming>,<destination>,<units>,<cost>,<ref>"
-- where ref is the session or event id and may itself hold commas). Both keys come in
-- the calling script's KEYS (charging/keys.py usage, usage_records): the account's slot.
local function bill_period(bp, now_s)
  local last = nil
  for _, p in ipairs(split(bp, '|')) do
    local at = string.find(p, ':', 1, true)
    last = string.sub(p, 1, at - 1)
    if now_s < tonumber(string.sub(p, at + 1)) then return last end
  end
  -- Past every known period end (bill runs missed): the last known period takes it.
  return last
end

local function record_usage(agg_key, records_key, bp, now_s, now_ms, u)
  if not bp or bp == '' or (u.units == 0 and u.cost == 0) then return end
  local period = bill_period(bp, now_s)
  local field = table.concat({period, u.service, u.zone, u.band, u.roaming}, '|')
  local prev = redis.call('HGET', agg_key, field)
  local units, cost, n = 0, 0, 0
  if prev then
    local v = split(prev, ',')
    units, cost, n = tonumber(v[1]), tonumber(v[2]), tonumber(v[3])
  end
  -- Units stop at +-MAX_EXACT: usage free of charge or covered by bundles is not bounded
  -- by money, and the records keep every unit. Cost is (charging/money.py).
  units = math.max(math.min(units + u.units, MAX_EXACT), -MAX_EXACT)
  redis.call('HSET', agg_key, field, fmt(units) .. ',' .. fmt(cost + u.cost) .. ',' .. fmt(n + 1))
  redis.call('RPUSH', records_key, table.concat({period, fmt(now_ms), u.service, u.zone, u.band, u.roaming,
    u.destination, fmt(u.units), fmt(u.cost), u.ref}, ','))
end

-- Notify once when the used part of the credit limit (limit - headroom) crosses 80 % and
-- 100 %; the level reached is kept in 'cl' and follows the headroom back down.
local function watch_credit(acct_key, outbox, limit, level_was, balance, now_ms)
  if limit <= 0 then return end
  local used = limit - balance
  local level = 0
  if used >= limit then level = 100 elseif used * 10 >= limit * 8 then level = 80 end
  if level > level_was then
    notify(outbox, 'credit_' .. fmt(level) .. ' - money ' .. fmt(balance) .. ' ' .. fmt(now_ms))
  end
  if level ~= level_was then redis.call('HSET', acct_key, 'cl', fmt(level)) end
end

-- Refunds (3GPP TS 32.299 Refund-Information) --------------------------------------
-- Every debit writes, in the script that makes it, a refund record of what it took, so
-- that a refund gives back at most that, to where it came from. A record is one entry
-- per rating group, entries separated by ' ':
--   "<rating group>;<unit>;<service>;<zone>;<band>;<roaming>;<debit time s>;<part>[;<part>]"
-- and a part per rate the usage was priced at (two across a tariff change, the later last):
--   "<rate>/<cum0>/<k0>/<left>/<money units>/<bucket id>:<n>|<bucket id>:<n>..."
-- cum0 and k0 are the rating group's cumulative units and money units before the debit
-- (0 for an event), left the units not refunded yet, then the units the money and each
-- bucket still hold, buckets in the order they were drawn on. Names and bucket ids never
-- hold ';', '/', '|' or ' ' (catalog.schema.json); a bucket id may hold ':', so an item
-- is split at its last one.

local function refund_part(rate, cum0, k0, units, money_units, taken)
  return table.concat({rate, fmt(cum0), fmt(k0), fmt(units), fmt(money_units), taken}, '/')
end

local function refund_entry(rg, unit, service, zone, band, roaming, at_s, parts)
  return table.concat({rg, unit, service, zone, band, roaming, fmt(at_s), table.concat(parts, ';')}, ';')
end

local function parse_refund_entry(text)
  local v = split(text, ';')
  local e = {rg = v[1], unit = v[2], service = v[3], zone = v[4], band = v[5], roaming = v[6],
             at_s = tonumber(v[7]), parts = {}}
  for i = 8, #v do
    local p = split(v[i], '/')
    local items = {}
    if p[6] ~= '' then
      for _, item in ipairs(split(p[6], '|')) do
        local id, n = bucket_item(item)
        items[#items + 1] = {id = id, n = n}
      end
    end
    e.parts[#e.parts + 1] = {rate = p[1], cum0 = tonumber(p[2]), k0 = tonumber(p[3]), left = tonumber(p[4]),
                             money = tonumber(p[5]), items = items}
  end
  return e
end

local function pack_refund_entry(e)
  local parts = {}
  for _, p in ipairs(e.parts) do
    local taken = {}
    for _, item in ipairs(p.items) do
      if item.n > 0 then taken[#taken + 1] = item.id .. ':' .. fmt(item.n) end
    end
    parts[#parts + 1] = refund_part(p.rate, p.cum0, p.k0, p.left, p.money, table.concat(taken, '|'))
  end
  return refund_entry(e.rg, e.unit, e.service, e.zone, e.band, e.roaming, e.at_s, parts)
end

-- Refund ``units`` of rating group rg from a record, as if the debit had been that many
-- units smaller: the debit is re-rated at the units left (rounded to the rate's
-- increments from the same cumulative start), and what it then takes too much goes back,
-- last taken first: money first (a debit draws on buckets before money), then buckets in
-- reverse order. A bucket still live gets its units back; a bucket that has expired (or
-- is gone) does not: its units are counted in the owner's 'expired_<unit>', as if they
-- had never been used, and are not turned into money (a bundle's units were not bought
-- at the rate's price). ``all`` are the loaded buckets; home and pool as for load_buckets.
-- Changes only ``all``: returns the money to give back, the new record, the entry, and
-- {account key, units} of units lost with their bucket (for count_expired); or nil and
-- the field at fault ('rating_group': none in the record; 'requested': another unit, or
-- more than is left).
local function take_refund(record, rg, unit, units, all, now_s, home, pool)
  local entries = split(record, ' ')
  local at = nil
  for i, text in ipairs(entries) do
    if string.sub(text, 1, #rg + 1) == rg .. ';' then at = i end
  end
  if not at then return nil, 'rating_group' end
  local e = parse_refund_entry(entries[at])
  if e.unit ~= unit then return nil, 'requested' end
  local left = 0
  for _, p in ipairs(e.parts) do left = left + p.left end
  if units > left then return nil, 'requested' end
  local money, rest, lost, returned = 0, units, {}, {}
  for i = #e.parts, 1, -1 do
    local p = e.parts[i]
    local t = math.min(rest, p.left)
    if t > 0 then
      local r = parse_rate(p.rate)
      local held = p.money
      for _, item in ipairs(p.items) do held = held + item.n end
      -- Usage past a session's overrun floor held less than its billable units (not all of
      -- it was billed): refunding that part first gives nothing back.
      local give = math.max(held - (billable(r, p.cum0 + p.left - t) - billable(r, p.cum0)), 0)
      local from_money = math.min(give, p.money)
      money = money + session_cost(r, p.k0 + p.money) - session_cost(r, p.k0 + p.money - from_money)
      p.money = p.money - from_money
      give = give - from_money
      for j = #p.items, 1, -1 do
        if give <= 0 then break end
        local item = p.items[j]
        local n = math.min(item.n, give)
        item.n = item.n - n
        give = give - n
        local b = all[item.id]
        if b and now_s < b.expiry then
          b.amount = b.amount + n
          b.dirty = true
          if n > 0 then returned[#returned + 1] = item.id .. ':' .. fmt(n) end
        else
          local owner = (string.sub(item.id, 1, 1) == '^' and pool) and pool[2] or home[2]
          lost[#lost + 1] = {owner, n}
          -- Given back too, and counted expired with their bucket: the record says so,
          -- or the system of record would count them used as well as expired.
          if n > 0 then returned[#returned + 1] = item.id .. ':' .. fmt(n) end
        end
      end
      p.left = p.left - t
      rest = rest - t
    end
  end
  entries[at] = pack_refund_entry(e)
  -- returned: the units given back to each bucket, "id:n|..." (the refund's usage record;
  -- those of an expired bucket are counted in its owner's 'expired_<unit>' as well)
  return money, table.concat(entries, ' '), e, lost, table.concat(returned, '|')
end

local function count_expired(lost, unit)
  for _, l in ipairs(lost) do
    if l[2] > 0 then redis.call('HINCRBY', l[1], 'expired_' .. unit, fmt(l[2])) end
  end
end
