"""API keys: random, shown once, stored as a SHA-256 hash (the keys carry 256
bits of entropy, so a fast hash is safe; there is nothing to brute-force)."""

from __future__ import annotations

import hashlib
import secrets
import time
import weakref

KEY_PREFIX = "ba_"
MAX_KEY_LENGTH = 200


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    """What listings show of a key: enough to tell keys apart, useless to an attacker."""
    return key[: len(KEY_PREFIX) + 6]


class KeyCache:
    """Key hash → tenant for `ttl_s` seconds, so a status poll does not look its key
    up in the database every time. Only keys that worked are kept (a flood of wrong
    keys cannot fill it), and at most `max_entries` of them.

    A key revoked in this process (`crud.revoke_api_key`) is forgotten at once by
    every cache here; one revoked by another process (`bitalloc keys revoke`)
    stops working within `ttl_s`. A TTL of 0 turns the cache off."""

    _all: weakref.WeakSet[KeyCache] = weakref.WeakSet()

    def __init__(self, ttl_s: float, max_entries: int = 10_000):
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self.entries: dict[str, tuple[float, object]] = {}  # key hash: (expiry, tenant)
        KeyCache._all.add(self)

    def get(self, key_hash: str):
        found = self.entries.get(key_hash)
        if found is None:
            return None
        if found[0] < time.monotonic():
            self.entries.pop(key_hash, None)
            return None
        return found[1]

    def put(self, key_hash: str, tenant) -> None:
        if self.ttl_s <= 0:
            return
        if len(self.entries) >= self.max_entries:
            self.entries.clear()
        self.entries[key_hash] = (time.monotonic() + self.ttl_s, tenant)

    @classmethod
    def forget_all(cls) -> None:
        """After a revocation: every cache in this process looks its keys up again."""
        for cache in list(cls._all):
            cache.entries.clear()
