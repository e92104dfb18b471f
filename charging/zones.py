"""Destinations: which zone a dialled number belongs to, by longest prefix match.

Numbers are digit strings (E.164 without '+', or short codes such as 112). The empty
prefix, when present, is the zone of everything else (the rest of the world).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ZoneTable:
    prefixes: Mapping[str, str]
    longest: int

    @staticmethod
    def build(prefixes: Mapping[str, str]) -> ZoneTable:
        return ZoneTable(dict(prefixes), max((len(p) for p in prefixes), default=0))

    def zone_of(self, number: str) -> str | None:
        """The zone of the longest prefix of ``number`` in the table, or None."""
        for length in range(min(len(number), self.longest), -1, -1):
            zone = self.prefixes.get(number[:length])
            if zone is not None:
                return zone
        return None
