"""One rate limit and one budget for every Ray actor of a step, held by a small Ray actor.

`RunLimits` hosts the same `RateLimiter` the local path uses (one per model, endpoint and
ceilings), so pacing and the slow-down after a 429 are shared by the whole cluster, and the
run's spend, so `llm.max_cost_usd` counts every actor's calls. In each worker the LLM client
reaches it through `ClusterLimiter` (installed with `use_limiter`) and `SpendCounter`
(installed with `use_counter`); the client itself is unchanged.
"""

import threading
import time

import ray

from rare.llm.rate_limit import RateLimiter, SettlesAnswers, TokenEstimate, rate_headers

SPEND_REFRESH_S = 0.5  # how stale a worker's view of the run's spend may get between its own calls


@ray.remote(num_cpus=0)
class RunLimits:
    """The run's spend and its rate limiters, for every actor of a step."""

    def __init__(self, spent_usd: float = 0.0):
        self.spent_usd = float(spent_usd)
        self.limiters: dict[tuple, RateLimiter] = {}

    def _limiter(self, key: tuple) -> RateLimiter:
        if key not in self.limiters:
            self.limiters[key] = RateLimiter(key[2], key[3], key[4])
        return self.limiters[key]

    async def acquire(self, key: tuple, tokens: int) -> float:
        return await self._limiter(key).acquire(tokens)

    async def on_rate_limited(self, key: tuple, started: float, retry_after_s: float | None) -> None:
        self._limiter(key).on_rate_limited(started, retry_after_s)

    async def on_success(self, key: tuple) -> None:
        self._limiter(key).on_success()

    async def correct_tokens(self, key: tuple, estimated: int, actual: int) -> None:
        self._limiter(key).correct_tokens(estimated, actual)

    async def follow_headers(self, key: tuple, headers: dict, tokens_needed: int) -> None:
        self._limiter(key).follow_headers(headers, tokens_needed)

    async def state(self, key: tuple) -> dict:
        return self._limiter(key).state()

    async def add(self, usd: float) -> float:
        self.spent_usd += usd
        return self.spent_usd

    async def total(self) -> float:
        return self.spent_usd


class ClusterLimiter(SettlesAnswers):
    """The `RateLimiter` interface of one client, answered by the step's `RunLimits` actor.

    Start times come from the actor's clock, so a 429 is compared with the cuts it made itself.
    What a request will use is estimated from this worker's own answers.
    """

    def __init__(self, limits, key: tuple):
        self.limits, self.key = limits, key
        self.limits_tokens = key[3] is not None  # a tpm ceiling: tokens are reserved per call
        self.estimate = TokenEstimate(key[4])

    def reservation(self, prompt_estimate: int, cap: int | None) -> int:
        return self.estimate.reservation(prompt_estimate, cap)

    def follow_headers(self, headers, tokens_needed: int) -> None:
        found = rate_headers(headers)
        if found:
            self.limits.follow_headers.remote(self.key, found, tokens_needed)

    async def acquire(self, tokens: int = 0) -> float:
        return await self.limits.acquire.remote(self.key, tokens)

    def correct_tokens(self, estimated: int, actual: int) -> None:
        self.limits.correct_tokens.remote(self.key, estimated, actual)

    def on_rate_limited(self, started: float, retry_after_s: float | None) -> None:
        self.limits.on_rate_limited.remote(self.key, started, retry_after_s)

    def on_success(self) -> None:
        self.limits.on_success.remote(self.key)

    def state(self) -> dict:
        return ray.get(self.limits.state.remote(self.key))


class SpendCounter:
    """A `multiprocessing.Value("d")` look-alike (what `rare.llm.budget` needs) over `RunLimits`.

    Adding sends the difference to the actor; reading returns the last total it reported,
    refreshed in the background, so a budget check never blocks the event loop.
    """

    def __init__(self, limits):
        self.limits = limits
        self._known = 0.0
        self._pending = limits.total.remote()
        self._asked_at = time.monotonic()
        self._lock = threading.Lock()

    def get_lock(self):
        return self._lock

    @property
    def value(self) -> float:
        if self._pending is not None:
            ready, _ = ray.wait([self._pending], timeout=0)
            if ready:
                self._known, self._pending = max(self._known, ray.get(self._pending)), None
        if self._pending is None and time.monotonic() - self._asked_at > SPEND_REFRESH_S:
            self._pending, self._asked_at = self.limits.total.remote(), time.monotonic()
        return self._known

    @value.setter
    def value(self, new: float) -> None:
        delta, self._known = new - self._known, new
        self._pending, self._asked_at = self.limits.add.remote(delta), time.monotonic()
