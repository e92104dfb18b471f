-- Shared by billing's scripts that build keys inside the script (the invoice states of an
-- account's open list, a credit note: the caller cannot know them, the open list is read
-- in the script): every key a script touches is in KEYS or in the slot of one, and a
-- prefix a script builds keys from is refused unless its hash tag is that key's.

-- A key's hash tag as Redis Cluster reads it (between the first '{' and the first '}'
-- after it, not empty), or nil.
local function hash_tag(key)
  local open = string.find(key, '{', 1, true)
  if not open then return nil end
  local close = string.find(key, '}', open + 1, true)
  if not close or close == open + 1 then return nil end
  return string.sub(key, open + 1, close - 1)
end

-- Nil when keys built from ``prefix`` share ``key``'s slot, else the error to answer
-- (before the script changes anything).
local function outside_slot(key, prefix, name)
  local tag = hash_tag(key)
  if tag ~= nil and hash_tag(prefix) == tag then return nil end
  return redis.error_reply('ERR ' .. name .. ': not in the slot of the account (hash tag {' .. tostring(tag) .. '})')
end
