-- Session-based charging: one INITIAL, UPDATE or TERMINATE request, atomically.
--
-- KEYS[1] account hash      {a:ID}
-- KEYS[2] open sessions     {a:ID}:sx      (zset session id -> deadline ms)
-- KEYS[3] session hash      {a:ID}:s:SESSION
-- KEYS[4] answer            {a:ID}:r:N:SESSION
-- ARGV[1] now (ms)          ARGV[2] request type: I, U or T
-- ARGV[3] session id        ARGV[4] request number
-- ARGV[5] payload digest    ARGV[6] identity field (msisdn|imsi)   ARGV[7] identity value
-- ARGV[8] plan id the request was rated with               ARGV[9] answer ttl (s)
-- ARGV[10] supervision time (ms)   ARGV[11] catalog version   ARGV[12] rating groups n
-- then n groups of 11: rating group, preset result code (0 = rate it), wanted units
--   (0 = no new grant), final (1 = release this rating group), validity time (s),
--   tariff change time (s, 0 none), used units before the tariff change, their rate,
--   used units after it, their rate, the rate that sizes the new grant.
-- A rate is "increment,price,connect fee,first increment,first price,minimum,cap"
-- (micros; cap 0: none). The price arithmetic mirrors charging/rating.py
-- (session_cost, affordable_units); tests hold the two together.
--
-- Reply, one of:
--   {'DONE', body, reserved_delta, session_delta}  first execution, body stored as answer
--   {'REPLAY', body}          same request number and payload seen before
--   {'CONFLICT'}              same request number, different payload: nothing changed
--   {'UNKNOWN'}               no such account, or the identity is not on it
--   {'PLAN', plan_id}         the account's plan differs from ARGV[8]: re-rate and retry
--   {'CATALOG', version}      the session is rated with another catalog version: re-rate
-- body = "<command result code> <plan id>" then per rating group
--        " <result code>,<granted units>,<cost micros>,<validity s>,<final unit 0|1>,<tariff change s>"

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

local function parse_rate(text)
  local v = {}
  for n in string.gmatch(text, '[^,]+') do v[#v + 1] = tonumber(n) end
  return {inc = v[1], price = v[2], connect = v[3], first = v[4], first_price = v[5], min = v[6], cap = v[7]}
end

-- r = {inc, price, connect, first, first_price, min, cap}
local function session_cost(r, u)
  if u <= 0 then return 0 end
  local rest = u - r.first
  if rest < 0 then rest = 0 end
  local total = r.connect + r.first_price + ceil_div(rest, r.inc) * r.price
  if total < r.min then total = r.min end
  if r.cap > 0 and total > r.cap then total = r.cap end
  return total
end

local function affordable(r, before, avail, want)
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

local prev = redis.call('GET', KEYS[4])
if prev then
  local sep = string.find(prev, '|', 1, true)
  if string.sub(prev, 1, sep - 1) ~= ARGV[5] then return {'CONFLICT'} end
  return {'REPLAY', string.sub(prev, sep + 1)}
end

local acct = redis.call('HMGET', KEYS[1], 'balance', 'reserved', 'plan', 'status', ARGV[6])
if not acct[1] or acct[5] ~= ARGV[7] then return {'UNKNOWN'} end
if acct[3] ~= ARGV[8] then return {'PLAN', acct[3]} end

local now = tonumber(ARGV[1])
local rtype = ARGV[2]
local reqno = tonumber(ARGV[4])
local plan = ARGV[8]
local active = acct[4] == 'active'
local balance = tonumber(acct[1])
local reserved = tonumber(acct[2])
local reserved_before = reserved

local function finish(body, session_delta)
  redis.call('SET', KEYS[4], ARGV[5] .. '|' .. body, 'EX', ARGV[9])
  return {'DONE', body, fmt(reserved - reserved_before), fmt(session_delta)}
end

local exists = redis.call('EXISTS', KEYS[3]) == 1
if rtype == 'I' then
  if exists then return finish('5012 ' .. plan, 0) end
  if not active then return finish('4010 ' .. plan, 0) end
elseif not exists then
  return finish('5002 ' .. plan, 0)
end

local s = {}
if exists then
  local flat = redis.call('HGETALL', KEYS[3])
  for i = 1, #flat, 2 do s[flat[i]] = flat[i + 1] end
  -- Prices stay those of the catalog the session started with.
  if s['cv'] and s['cv'] ~= ARGV[11] then return {'CATALOG', s['cv']} end
else
  s['cv'] = ARGV[11]
end

local n = tonumber(ARGV[12])
local parts = {}
local any_ok = (n == 0)
local first_fail = nil
local i = 13
for _ = 1, n do
  local rg = ARGV[i]
  local rc = tonumber(ARGV[i + 1])
  local want = tonumber(ARGV[i + 2])
  local final = ARGV[i + 3] == '1'
  local vt = tonumber(ARGV[i + 4])
  local tct = ARGV[i + 5]
  local used_a, used_b = tonumber(ARGV[i + 6]), tonumber(ARGV[i + 8])
  local used = used_a + used_b
  i = i + 11
  local granted, cost, fui, vt_out, tct_out = 0, 0, 0, 0, '0'
  if rc == 0 then
    rc = 2001
    local r = parse_rate(ARGV[i - 1])
    local r_units = tonumber(s['u' .. rg] or '0')
    local r_money = tonumber(s['m' .. rg] or '0')
    local cum = tonumber(s['c' .. rg] or '0')
    local r_no = tonumber(s['n' .. rg] or '-1')
    local overrun = false
    if used > 0 then
      if used_a > 0 then
        local ra = parse_rate(ARGV[i - 4])
        cost = session_cost(ra, cum + used_a) - session_cost(ra, cum)
        cum = cum + used_a
      end
      if used_b > 0 then
        local rb = parse_rate(ARGV[i - 2])
        cost = cost + session_cost(rb, cum + used_b) - session_cost(rb, cum)
        cum = cum + used_b
      end
      balance = balance - cost
      overrun = r_no >= 0 and used > r_units
    end
    -- A late, older request reports its usage but leaves the newer reservation alone.
    if reqno >= r_no then
      reserved = reserved - r_money
      r_units, r_money = 0, 0
      if overrun then
        rc = 4012
      elseif rtype ~= 'T' and not final and want > 0 then
        if not active then
          rc = 4010
        else
          local g = affordable(r, cum, balance - reserved, want)
          if g <= 0 then
            rc = 4012
          else
            if g < want then fui = 1 end
            r_money = session_cost(r, cum + g) - session_cost(r, cum)
            r_units = g
            reserved = reserved + r_money
            granted, vt_out, tct_out = g, vt, tct
          end
        end
      end
      s['n' .. rg] = fmt(reqno)
    end
    s['u' .. rg] = fmt(r_units)
    s['m' .. rg] = fmt(r_money)
    s['c' .. rg] = fmt(cum)
  end
  if rc == 2001 or rc == 4011 then
    any_ok = true
  elseif not first_fail then
    first_fail = rc
  end
  parts[#parts + 1] = table.concat({fmt(rc), fmt(granted), fmt(cost), fmt(vt_out), fmt(fui), tct_out}, ',')
end

local cmd = 2001
if not any_ok then cmd = first_fail end

local session_delta = 0
if rtype == 'T' or (rtype == 'I' and cmd ~= 2001) then
  -- The session ends: release whatever this request did not already release.
  for k, v in pairs(s) do
    if string.sub(k, 1, 1) == 'm' then reserved = reserved - tonumber(v) end
  end
  if exists then
    redis.call('DEL', KEYS[3])
    redis.call('ZREM', KEYS[2], ARGV[3])
    session_delta = -1
  end
else
  local deadline = now + tonumber(ARGV[10])
  s['dl'] = fmt(deadline)
  local flat = {}
  for k, v in pairs(s) do flat[#flat + 1] = k; flat[#flat + 1] = v end
  redis.call('HSET', KEYS[3], unpack(flat))
  redis.call('ZADD', KEYS[2], deadline, ARGV[3])
  if not exists then session_delta = 1 end
end

redis.call('HSET', KEYS[1], 'balance', fmt(balance), 'reserved', fmt(reserved))
return finish(fmt(cmd) .. ' ' .. plan .. (#parts > 0 and ' ' or '') .. table.concat(parts, ' '), session_delta)
