"""Per-key request rate limit (a token bucket per API key, in this process) and the
per-tenant cap on jobs in flight; both answer 429 with Retry-After."""

from __future__ import annotations

import math
import threading
import time

from fastapi import HTTPException, status


def too_many(reason: str, retry_after_s: float) -> HTTPException:
    return HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, reason,
                         headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})


class RateLimiter:
    """`rate_per_s` requests a second per key with bursts up to `burst`; a rate of 0
    turns the limit off. Keys are the stored key hashes, never the keys."""

    MAX_BUCKETS = 100_000

    def __init__(self, rate_per_s: float, burst: int):
        self.rate, self.burst = rate_per_s, burst
        self.buckets: dict[str, tuple[float, float]] = {}  # key hash: (tokens, last time)
        self.lock = threading.Lock()

    def check(self, key_hash: str) -> None:
        """Spend one token for this key, or raise 429 saying when to come back."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        with self.lock:
            if len(self.buckets) > self.MAX_BUCKETS:
                self.buckets.clear()
            tokens, last = self.buckets.get(key_hash, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self.buckets[key_hash] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
                raise too_many(f"rate limit of {self.rate:g} requests/s per API key "
                               f"(bursts of {self.burst}) exceeded; retry in {wait:.1f} s",
                               wait)
            self.buckets[key_hash] = (tokens - 1.0, now)
