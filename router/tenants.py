"""Clients as the operator configures them: API keys and, per key, a prefix-cache salt.

An API keys file line is a key, optionally followed by ``cache_salt=SALT``. Requests of
a key with a salt are salted (vLLM's ``cache_salt``, before any salt the request brings):
its cached blocks are shared only with the keys that have the same salt, so
``cached_tokens`` tells a tenant nothing about another's prompts. ``--cache-salt-per-key``
gives every key without one its own. Salts are kept by client id (router/admission.py),
never by key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from router.admission import client_id

SALT_PREFIX = "cache_salt="


@dataclass(frozen=True)
class Tenants:
    keys: tuple[str, ...] = field(default=(), repr=False)  # clients must send one (Bearer); () = open
    salts: Mapping[str, str] = field(default_factory=dict, repr=False)  # client id → cache salt

    @classmethod
    def parse(cls, entries: Iterable[str], salt_per_key: bool = False) -> Tenants:
        """``entries``: ``KEY`` or ``KEY cache_salt=SALT`` each; ``ValueError`` naming the
        line number (never the key) for anything else."""
        keys: list[str] = []
        salts: dict[str, str] = {}
        for n, entry in enumerate(entries, 1):
            key, *rest = entry.split()
            if len(rest) > 1 or (rest and not (rest[0].startswith(SALT_PREFIX) and rest[0] != SALT_PREFIX)):
                raise ValueError(f"api key entry {n}: expected KEY or KEY {SALT_PREFIX}SALT")
            keys.append(key)
            if rest:
                salts[client_id(key)] = rest[0].removeprefix(SALT_PREFIX)
            elif salt_per_key:
                salts[client_id(key)] = client_id(key)
        return cls(tuple(dict.fromkeys(keys)), MappingProxyType(salts))

    def salt(self, client: str) -> str:
        """The cache salt of ``client`` (a client id); "" for none."""
        return self.salts.get(client, "")
