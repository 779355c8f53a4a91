"""Rate limits per API token: a token bucket for each token, refused with 429 and ``Retry-After``.

A bucket holds up to ``burst`` requests and refills at ``per_second``; each request takes one.
An empty bucket refuses the request with :class:`RateLimited` (HTTP 429), whose
``retry_after_s`` is the whole seconds until the bucket holds a request again. Buckets are keyed
by the token's id, so a token keeps its budget however many connections or addresses it uses,
and one token's traffic never spends another's. Health probes carry no token and are never limited.

The limiter lives in one server's event loop (no lock: nothing else touches it) and keeps at
most ``max_keys`` buckets, dropping the least recently used: a bucket idle that long is full
again anyway, so forgetting it changes nothing.

>>> clock = iter([0.0, 0.0, 0.0, 0.5]).__next__
>>> limiter = RateLimiter(per_second=2, burst=2, clock=clock)
>>> limiter.take("ci"), limiter.take("ci")
(None, None)
>>> limiter.take("ci")
Traceback (most recent call last):
...
aifab.core.errors.RateLimited: API token 'ci': over its rate limit (2 per second, 2 at once); retry in 1 s
>>> limiter.take("ci")  # half a second later: one request's worth has come back
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aifab.core.config import ServeConfig, parse_rate
from aifab.core.errors import ConfigError, RateLimited

__all__ = ["RateLimiter", "rate_limited_counter", "rate_limiter"]


class RateLimiter:
    """Token buckets of ``burst`` requests refilled at ``per_second``, one per key.

    ``on_limited(who)`` is called for every refusal (for metrics).

    >>> RateLimiter(per_second=0, burst=1)
    Traceback (most recent call last):
    ...
    aifab.core.errors.ConfigError: The 'per_second' parameter of RateLimiter must be above 0. Got 0 instead.
    """

    def __init__(
        self,
        *,
        per_second: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
        on_limited: Callable[[str], None] | None = None,
    ) -> None:
        for param, value in (("per_second", per_second), ("burst", burst), ("max_keys", max_keys)):
            if not value > 0:
                raise ConfigError(
                    f"The {param!r} parameter of RateLimiter must be above 0. "
                    f"Got {value!r} instead."
                )
        self.per_second = float(per_second)
        self.burst = int(burst)
        self.clock = clock
        self.max_keys = max_keys
        self.on_limited = on_limited
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (level, at)

    def take(self, key: str, *, who: str | None = None) -> None:
        """Spend one request of ``key``'s bucket, or raise :class:`RateLimited` naming ``who``
        (default: the key) and leaving the bucket as it was."""
        now = self.clock()
        level, at = self._buckets.pop(key, (float(self.burst), now))
        level = min(float(self.burst), level + (now - at) * self.per_second)
        if level < 1.0:
            self._remember(key, level, now)
            if self.on_limited is not None:
                self.on_limited(who or key)
            wait = max(1, math.ceil((1.0 - level) / self.per_second))
            raise RateLimited(
                f"API token {who or key!r}: over its rate limit ({self.per_second:g} per second, "
                f"{self.burst} at once); retry in {wait} s",
                retry_after_s=wait,
                details={
                    "limit": "rate_limit",
                    "per_second": self.per_second,
                    "burst": self.burst,
                    "retry_after_s": wait,
                },
            )
        self._remember(key, level - 1.0, now)

    def _remember(self, key: str, level: float, now: float) -> None:
        self._buckets[key] = (level, now)  # popped first, so this is the most recent end
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)


def rate_limiter(
    config: ServeConfig, *, on_limited: Callable[[str], None] | None = None
) -> RateLimiter | None:
    """The limiter ``config`` asks for, or None when it sets no ``rate_limit``.

    >>> rate_limiter(ServeConfig()) is None
    True
    >>> limiter = rate_limiter(ServeConfig(rate_limit="600/min"))
    >>> limiter.per_second, limiter.burst
    (10.0, 600)
    """
    if config.rate_limit is None:
        return None
    per_second, count = parse_rate(config.rate_limit)
    return RateLimiter(
        per_second=per_second, burst=config.rate_burst or count, on_limited=on_limited
    )


def rate_limited_counter(registry: Any) -> Any:
    """The Prometheus counter ``aifab_rate_limited_total{token}`` (refusals by token name), on
    ``registry`` (a server's own ``CollectorRegistry``)."""
    from prometheus_client import Counter

    return Counter(
        "aifab_rate_limited",
        "Requests refused by their API token's rate limit, by token name",
        ["token"],
        registry=registry,
    )
