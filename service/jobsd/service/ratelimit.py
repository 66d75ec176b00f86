"""Per-token rate limits: one token bucket per token, on the injected clock.

Every request of either edge authenticates through `JobService.authenticate`, which takes one request from the
bucket of the token it authenticated, so the gRPC services, the REST gateway and the data-source endpoints share
one limiter and one budget per token. A bucket holds `burst` requests and refills at `rate` a second; an empty
bucket refuses with `ResourceExhausted` carrying how long to wait (`retry_after`) and the bucket's state (its size,
what is left, the seconds until it is full again), which each edge renders its own way (gRPC trailing metadata,
REST `Retry-After` and `X-RateLimit-*` headers). Time comes from the service's clock, so tests move time instead
of waiting for it; a clock that steps back refills nothing and takes nothing away.

Memory is bounded: at most `max_buckets` tokens are tracked. A bucket that has refilled to full is the same as no
bucket, so those are dropped first; if every tracked bucket is in use, the oldest-made ones go (a token returning
after that starts full again — it would take more than `max_buckets` busy tokens at once to gain from it).
"""

from __future__ import annotations

import math

from jobsd.domain.clock import Clock, to_micros
from jobsd.errors import ResourceExhausted

__all__ = ["DEFAULT_MAX_BUCKETS", "TokenBuckets"]

DEFAULT_MAX_BUCKETS = 100_000


class TokenBuckets:
    """`take(key)` one request for `key` (a token's hash) or raise ResourceExhausted. rate 0: no limit."""

    def __init__(self, clock: Clock, rate: float, burst: int, *, max_buckets: int = DEFAULT_MAX_BUCKETS) -> None:
        self._clock = clock
        self.rate = rate
        self.burst = max(1, burst)
        self._max = max_buckets
        # key -> [requests left (fractional), when they were counted (seconds)]
        self._buckets: dict[str, list[float]] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def _now(self) -> float:
        return to_micros(self._clock.now()) / 1_000_000

    def take(self, key: str) -> int:
        """Take one request from `key`'s bucket; the whole requests left after it. ResourceExhausted when empty."""
        if self.rate <= 0:
            return self.burst
        now = self._now()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max:
                self._evict(now)
            bucket = self._buckets[key] = [float(self.burst), now]
        else:
            elapsed = now - bucket[1]
            if elapsed > 0:
                bucket[0] = min(float(self.burst), bucket[0] + elapsed * self.rate)
                bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return int(bucket[0])
        retry_after = (1.0 - bucket[0]) / self.rate
        raise ResourceExhausted(
            f"Too many requests with this token: at most {self.rate:g} a second, in bursts of {self.burst} "
            f"(JOBSD_RATE_LIMIT={self.rate:g}, JOBSD_RATE_LIMIT_BURST={self.burst}); retry after "
            f"{math.ceil(retry_after * 1000)} ms",
            retry_after=retry_after,
            limit=self.burst,
            remaining=0,
            reset_after=(self.burst - bucket[0]) / self.rate,
        )

    def _evict(self, now: float) -> None:
        full = [key for key, (left, then) in self._buckets.items() if left + (now - then) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]
        # Down to nine tenths, so a saturated table scans once per tenth of it, not once per new token.
        keep = self._max - max(1, self._max // 10)
        while len(self._buckets) > keep:
            del self._buckets[next(iter(self._buckets))]

    def tracked(self) -> int:
        """Buckets held now (for the tests of the bound)."""
        return len(self._buckets)
