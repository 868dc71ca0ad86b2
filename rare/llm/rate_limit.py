"""Pacing requests to a provider: requests/minute and tokens/minute ceilings, slowing down on 429.

The limiter is a reservation-style token bucket (GCRA): each request reserves the next free
slot and sleeps until it, so waiters never stampede and the cost per call is a few float
operations. Tokens are reserved before a call as an estimate (prompt characters / 4 plus
`max_tokens`) and corrected by the usage the provider reports.

On a 429 every new request waits out the Retry-After, and the allowed request rate drops to
the rate the provider recently accepted, i.e. requests started minus those refused with
429 (falling by at most half, at most once per `CUT_INTERVAL_S`): when the provider enforces
a limit, that is the limit; when 429s are scattered, the rate barely moves. One burst of 429s
from requests sent at the same rate cuts only once. Successes then raise the rate again,
doubling it every `RECOVERY_DOUBLING_S` seconds, back to the ceiling (or to no limit).
Recovery is as fast as cutting can be, so even 429s that come whatever the rate (a provider
refusing half of everything for a while) cannot ratchet the rate down to a stall; a run at
the provider's limit settles near it instead of hitting it over and over.

Clients talking to the same model and endpoint share one limiter in a process.
"""

import asyncio
import time
from collections import deque

BURST_S = 1.0  # a bucket holds this many seconds' worth of requests / tokens
MIN_REQUEST_RATE = 1 / 60  # never slow down below one request per minute
CUT_INTERVAL_S = 2.0  # at most one cut per interval, however many 429s arrive
RECOVERY_DOUBLING_S = CUT_INTERVAL_S  # while calls succeed, a cut rate doubles this often (never slower than cuts)
OBSERVE_WINDOW_S = 5.0  # the recent request rate is measured over this long
UNLIMITED_HEADROOM = 4.0  # without a ceiling, the cut is lifted once it is this far above demand


class RateLimiter:
    """Paces calls under `rpm` requests/minute and `tpm` tokens/minute (None = no ceiling)."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None):
        self.max_request_rate = float(rpm) / 60 if rpm else None
        self.max_token_rate = float(tpm) / 60 if tpm else None
        self.request_rate = self.max_request_rate  # allowed now, per second; None = unlimited
        self.token_rate = self.max_token_rate
        self.paused_until = 0.0
        self._resumed_at = float("-inf")  # end of the last Retry-After pause that is over
        self.rate_limited = 0  # 429s seen
        self.cuts = 0  # times the rate was halved
        self._request_tat = 0.0  # GCRA: when the request bucket is next empty
        self._token_tat = 0.0
        self._last_cut = float("-inf")
        self._epoch = 0  # bumped by every cut: reservations made before it are made again
        self._last_growth = 0.0
        self._starts: deque[float] = deque(maxlen=4096)
        self._refusals: deque[float] = deque(maxlen=4096)

    def __repr__(self) -> str:
        return f"RateLimiter(request_rate={self.request_rate}, token_rate={self.token_rate})"

    @property
    def limits_tokens(self) -> bool:
        return self.token_rate is not None

    async def acquire(self, tokens: int = 0) -> float:
        """Wait for a slot for one request of about `tokens` tokens; returns its start time."""
        now = time.monotonic()
        if self.request_rate is None and self.token_rate is None and now >= self.paused_until:
            self._starts.append(now)
            return now
        while True:
            if now < self.paused_until:
                await asyncio.sleep(self.paused_until - now)
                now = time.monotonic()
                continue
            epoch = self._epoch
            wait = 0.0
            if self.request_rate is not None:
                self._request_tat = max(self._request_tat, now) + 1 / self.request_rate
                wait = self._request_tat - now - max(BURST_S, 1 / self.request_rate)
            if self.token_rate is not None and tokens:
                self._token_tat = max(self._token_tat, now) + tokens / self.token_rate
                wait = max(wait, self._token_tat - now - BURST_S)
            if wait > 0:
                await asyncio.sleep(wait)
                now = time.monotonic()
                if now < self.paused_until or epoch != self._epoch:  # a 429 arrived while this request waited
                    continue
            self._starts.append(now)
            return now

    def correct_tokens(self, estimated: int, actual: int) -> None:
        """Give back (or take) the difference between reserved and reported tokens."""
        if self.token_rate is not None and actual != estimated:
            self._token_tat += (actual - estimated) / self.token_rate

    def _window_start(self, now: float) -> float:
        """Rates are measured since this: the last few seconds, but not across a finished pause
        (time spent waiting out a Retry-After says nothing about what the provider accepts)."""
        return max(now - OBSERVE_WINDOW_S, self._resumed_at)

    def observed_rate(self, now: float) -> float:
        """Requests per second started over the last few seconds."""
        recent = [t for t in self._starts if t >= self._window_start(now)]
        if len(recent) < 2:
            return MIN_REQUEST_RATE * 60
        return len(recent) / max(now - recent[0], 0.5)

    def accepted_rate(self, now: float) -> float:
        """Requests per second recently started and not refused with a 429.

        Other failures (5xx, timeouts, bad answers) say nothing about the rate limit, so they
        count as accepted: only 429s may slow the client down.
        """
        recent = [t for t in self._starts if t >= self._window_start(now)]
        if len(recent) < 2:
            return MIN_REQUEST_RATE
        refused = sum(1 for t in self._refusals if t >= recent[0])
        return max(0, len(recent) - refused) / max(now - recent[0], 0.5)

    def on_rate_limited(self, started: float, retry_after_s: float | None) -> None:
        """A request started at `started` got a 429: pause for Retry-After and cut the rate."""
        now = time.monotonic()
        self.rate_limited += 1
        self._refusals.append(now)
        if self.paused_until <= now:
            self._resumed_at = max(self._resumed_at, self.paused_until)
        if retry_after_s:
            self.paused_until = max(self.paused_until, now + retry_after_s)
        if started < self._last_cut or now - self._last_cut < CUT_INTERVAL_S:
            return  # the last cut already answers this one
        current = self.request_rate if self.request_rate is not None else self.observed_rate(now)
        self.request_rate = max(MIN_REQUEST_RATE, min(current, max(current / 2, self.accepted_rate(now))))
        resume_at = max(now, self.paused_until)
        # the buckets start empty when the pause ends: no burst right after a 429
        self._request_tat = resume_at + max(BURST_S, 1 / self.request_rate)
        if self.token_rate is not None:
            self.token_rate = max(1.0, self.token_rate / 2)
            self._token_tat = resume_at + BURST_S
        self._epoch += 1
        self._last_cut = now
        self._last_growth = now
        self.cuts += 1

    def on_success(self) -> None:
        """A call succeeded: let a cut rate grow back toward its ceiling."""
        if self._last_growth == 0.0:
            return
        now = time.monotonic()
        if now < self.paused_until:
            return
        growth = 2 ** (min(now - self._last_growth, RECOVERY_DOUBLING_S) / RECOVERY_DOUBLING_S)
        self._last_growth = now
        if self.request_rate is not None and self.request_rate != self.max_request_rate:
            self.request_rate *= growth
            if self.max_request_rate is not None:
                self.request_rate = min(self.request_rate, self.max_request_rate)
            elif self.request_rate >= UNLIMITED_HEADROOM * self.observed_rate(now):
                self.request_rate = None
        if self.token_rate is not None and self.max_token_rate is not None:
            self.token_rate = min(self.max_token_rate, self.token_rate * growth)
        if self.request_rate == self.max_request_rate and self.token_rate == self.max_token_rate:
            self._last_growth = 0.0  # fully recovered

    def state(self) -> dict:
        """For reports and tests: the allowed rates per minute and the 429s seen."""
        per_minute = lambda rate: None if rate is None else round(rate * 60, 3)  # noqa: E731
        return {
            "rpm": per_minute(self.request_rate),
            "tpm": per_minute(self.token_rate),
            "rate_limited": self.rate_limited,
            "cuts": self.cuts,
        }


_SHARED: dict[tuple, RateLimiter] = {}


def reset_shared_limiters() -> None:
    """Forget learned slow-downs (a new run starts at the configured ceilings)."""
    _SHARED.clear()


def shared_limiter(model: str, endpoint: str | None, rpm: float | None, tpm: float | None) -> RateLimiter:
    """The limiter every client of this process with the same model, endpoint and ceilings uses."""
    key = (model, endpoint, rpm, tpm)
    limiter = _SHARED.get(key)
    if limiter is None:
        limiter = _SHARED[key] = RateLimiter(rpm, tpm)
    return limiter


def use_limiter(model: str, endpoint: str | None, rpm: float | None, tpm: float | None, limiter) -> None:
    """Make `shared_limiter` hand out `limiter` for these settings (e.g. one shared by a Ray cluster)."""
    _SHARED[(model, endpoint, rpm, tpm)] = limiter


def estimate_tokens(messages: list[dict], max_tokens: int | None) -> int:
    """A cheap upper-ish guess of a call's tokens: prompt characters / 4, plus the answer cap."""
    chars = sum(len(m.get("content") or "") if isinstance(m.get("content"), str) else 400 for m in messages)
    return chars // 4 + 4 * len(messages) + int(max_tokens or 0)
