"""Redis keys of the security package; nothing else reads or writes them.

Both keys share the ``{security}`` hash tag, so creating and revoking a token (one
transaction over both) works on Redis Cluster.
"""

from __future__ import annotations

# hash: SHA-256 of a token (hex) -> the token's record (JSON: name, roles, channels, created)
TOKENS = "{security}:tokens"
# hash: token name -> SHA-256 of its token (hex)
TOKEN_NAMES = "{security}:token_names"
