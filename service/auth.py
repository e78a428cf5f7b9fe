"""API keys: random, shown once, stored as a SHA-256 hash (the keys carry 256
bits of entropy, so a fast hash is safe; there is nothing to brute-force)."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "ba_"
MAX_KEY_LENGTH = 200


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    """What listings show of a key: enough to tell keys apart, useless to an attacker."""
    return key[: len(KEY_PREFIX) + 6]
