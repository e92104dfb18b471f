"""Redis names the Diameter door owns."""

from __future__ import annotations

# Pub/sub channel of account signals (``signals.py``): "<kind> <account id>".
SIGNALS = "diameter:signals"
