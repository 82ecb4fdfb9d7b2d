"""Rate limiter: token buckets on bytes and/or packets, with burst, per key or global."""

from nfaas.vnfs.ratelimit.buckets import MAX_ROUNDS, Limit, TokenBuckets, Verdict
from nfaas.vnfs.ratelimit.limiter import (
    KEYS,
    RateLimit,
    RateLimiter,
    RateLimitStats,
    rate_limit,
    rate_limit_split,
    ratelimit_graph,
)

__all__ = [
    "KEYS",
    "MAX_ROUNDS",
    "Limit",
    "RateLimit",
    "RateLimitStats",
    "RateLimiter",
    "TokenBuckets",
    "Verdict",
    "rate_limit",
    "rate_limit_split",
    "ratelimit_graph",
]
