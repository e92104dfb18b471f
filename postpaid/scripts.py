"""The billing Lua scripts (``postpaid/*.lua``, each headed by its KEYS, ARGV and reply).

Line scripts run in the charging account's slot; the others in the ``{bill}`` slot.
"""

from __future__ import annotations

from charging.ledger import LuaScript

ENROL = LuaScript("enrol.lua", package="postpaid")
CLOSE = LuaScript("charging:ledger_lib.lua", "close.lua", package="postpaid")
CREDIT = LuaScript("credit.lua", package="postpaid")
ISSUE = LuaScript("issue.lua", package="postpaid")
PAY = LuaScript("pay.lua", package="postpaid")
DUNNING = LuaScript("dunning.lua", package="postpaid")
PURGE = LuaScript("purge.lua", package="postpaid")
DISPUTE = LuaScript("dispute.lua", package="postpaid")
PREPAID_CLOSE = LuaScript("prepaid_close.lua", package="postpaid")
