"""Pacing requests to a provider: requests/minute and tokens/minute ceilings, slowing down on 429.

The limiter is a reservation-style token bucket (GCRA): each request reserves the next free
slot and sleeps until it, so waiters never stampede and the cost per call is a few float
operations. It paces at `HEADROOM` of the ceilings: exactly at a provider's limit, the
jitter of arrival times alone gets requests refused.

What a request counts against a tokens-per-minute limit depends on the provider, and
`tpm_counts` says which:
- `used` (the test server, vLLM/LiteLLM proxies with budgets, most gateways): the prompt and
  the completion it really generates. rare reserves the prompt (characters / 4, scaled by
  the ratio of reported to estimated prompt tokens so far) plus the mean completion measured
  so far, and reconciles with the reported usage when the answer arrives. Reserving
  `max_tokens` for every request in flight instead would pace far under the limit.
- `max_tokens` (OpenAI counts the larger of `max_tokens` and its prompt estimate up front;
  Anthropic's output-token limit starts at `max_tokens` and settles when the answer ends):
  rare reserves prompt + cap, and reconciles with the reported usage likewise.
The provider's `x-ratelimit-remaining-{requests,tokens}` / `x-ratelimit-limit-*` headers
(OpenAI, Azure, many gateways; Anthropic's `anthropic-ratelimit-*` are not read) hold back new
requests when what remains is less than the next request needs, until it has refilled.

On a 429 every new request waits out the Retry-After, and the allowed request rate drops to
the rate the provider recently accepted, i.e. requests started minus those refused with
429 (falling by at most half, at most once per `CUT_INTERVAL_S`; the token rate falls by the
same share): when the provider enforces
a limit, that is the limit; when 429s are scattered, the rate barely moves. One burst of 429s
from requests sent at the same rate cuts only once. Successes then raise the rate again,
doubling it every `RECOVERY_DOUBLING_S` seconds, back to the ceiling (or to no limit).
Recovery is as fast as cutting can be, so even 429s that come whatever the rate (a provider
refusing half of everything for a while) cannot ratchet the rate down to a stall; a run at
the provider's limit settles near it instead of hitting it over and over.

Clients talking to the same model and endpoint share one limiter in a process.
"""

import asyncio
import re
import time
from collections import deque

BURST_S = 1.0  # a bucket holds this many seconds' worth of requests / tokens
MIN_REQUEST_RATE = 1 / 60  # never slow down below one request per minute
CUT_INTERVAL_S = 2.0  # at most one cut per interval, however many 429s arrive
RECOVERY_DOUBLING_S = CUT_INTERVAL_S  # while calls succeed, a cut rate doubles this often (never slower than cuts)
OBSERVE_WINDOW_S = 5.0  # the recent request rate is measured over this long
UNLIMITED_HEADROOM = 4.0  # without a ceiling, the cut is lifted once it is this far above demand
HEADROOM = 0.98  # pace at this share of a ceiling: arrival jitter at exactly the limit gets requests refused
TPM_COUNTS = ("used", "max_tokens")
FIRST_COMPLETION_GUESS = 512  # completion tokens reserved per request until answers have been measured
LEARN_AFTER = 50  # means over the first answers, then moving averages over about this many
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class TokenEstimate:
    """What a request will count against a token limit, learned from the answers (`tpm_counts` above)."""

    def __init__(self, counts: str = "used"):
        if counts not in TPM_COUNTS:
            raise ValueError(f"tpm_counts must be one of {TPM_COUNTS}, got {counts!r}")
        self.counts = counts
        self.answers = 0
        self.prompt_ratio = 1.0  # reported / estimated prompt tokens
        self.completion_mean: float | None = None

    def reservation(self, prompt_estimate: int, cap: int | None) -> int:
        """Tokens to reserve for a request with this prompt estimate and answer cap."""
        prompt = prompt_estimate * self.prompt_ratio
        if self.counts == "max_tokens":
            return int(prompt + (cap or 0) + 0.5)
        completion = FIRST_COMPLETION_GUESS if self.completion_mean is None else self.completion_mean
        return int(prompt + (min(completion, cap) if cap else completion) + 0.5)

    def learn(self, prompt_estimate: int, prompt_tokens: int, completion_tokens: int) -> None:
        """One answer's reported usage."""
        if not (prompt_tokens or completion_tokens):
            return  # the provider reported no usage
        self.answers += 1
        weight = 1 / min(self.answers, LEARN_AFTER)
        if prompt_estimate and prompt_tokens:
            self.prompt_ratio += weight * (prompt_tokens / prompt_estimate - self.prompt_ratio)
        previous = completion_tokens if self.completion_mean is None else self.completion_mean
        self.completion_mean = previous + weight * (completion_tokens - previous)


def duration_seconds(text) -> float | None:
    """`1s`, `6m0s`, `20ms`, `0.5` (seconds): a rate-limit reset time; None when unreadable."""
    if text is None:
        return None
    try:
        return max(0.0, float(text))
    except (TypeError, ValueError):
        pass
    parts = _DURATION.findall(str(text))
    return sum(float(number) * _UNIT_S[unit] for number, unit in parts) if parts else None


def _number(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def rate_headers(headers) -> dict[str, str]:
    """The `x-ratelimit-*` headers of a response, names in lower case."""
    return {str(k).lower(): v for k, v in dict(headers or {}).items() if "ratelimit" in str(k).lower()}


class SettlesAnswers:
    """`on_answer` for a limiter with `estimate`, `correct_tokens` and `follow_headers`."""

    def on_answer(
        self, reserved: int, prompt_estimate: int, prompt_tokens: int, completion_tokens: int, headers=None
    ) -> None:
        """An answer arrived: learn from its usage, settle its reservation, follow the rate headers."""
        self.estimate.learn(prompt_estimate, prompt_tokens, completion_tokens)
        if reserved and (prompt_tokens or completion_tokens):
            self.correct_tokens(reserved, prompt_tokens + completion_tokens)
        if headers:
            self.follow_headers(headers, reserved)


class RateLimiter(SettlesAnswers):
    """Paces calls under `rpm` requests/minute and `tpm` tokens/minute (None = no ceiling).

    `tpm_counts` says what the provider's token limit counts (see the module doc).
    """

    def __init__(self, rpm: float | None = None, tpm: float | None = None, tpm_counts: str = "used"):
        self.max_request_rate = float(rpm) / 60 * HEADROOM if rpm else None
        self.max_token_rate = float(tpm) / 60 * HEADROOM if tpm else None
        self.request_rate = self.max_request_rate  # allowed now, per second; None = unlimited
        self.token_rate = self.max_token_rate
        self.estimate = TokenEstimate(tpm_counts)
        self.paused_until = 0.0
        self.held_until = 0.0  # the provider's headers say it has no room before this: new requests wait
        self.held = 0  # times the headers held requests back
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
        if self.request_rate is None and self.token_rate is None and now >= max(self.paused_until, self.held_until):
            self._starts.append(now)
            return now
        while True:
            pause = max(self.paused_until, self.held_until)
            if now < pause:
                await asyncio.sleep(pause - now)
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

    def reservation(self, prompt_estimate: int, cap: int | None) -> int:
        """Tokens to reserve (`acquire`) for a request: see `TokenEstimate`."""
        return self.estimate.reservation(prompt_estimate, cap)

    def follow_headers(self, headers, tokens_needed: int) -> None:
        """Hold new requests back while the provider's `x-ratelimit-remaining-*` is below what one needs."""
        found = rate_headers(headers)
        if not found:
            return
        now = time.monotonic()
        for name, needed in (("requests", 1), ("tokens", tokens_needed)):
            remaining = _number(found.get(f"x-ratelimit-remaining-{name}"))
            if remaining is None or not needed or remaining >= needed:
                continue
            limit = _number(found.get(f"x-ratelimit-limit-{name}"))
            if limit:
                wait = (needed - remaining) / (limit / 60)
            else:
                wait = duration_seconds(found.get(f"x-ratelimit-reset-{name}")) or 0.0
            if wait > 0 and now + wait > self.held_until:
                self.held_until = now + min(wait, OBSERVE_WINDOW_S)
                self.held += 1

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
        observed, accepted = self.observed_rate(now), self.accepted_rate(now)
        current = self.request_rate if self.request_rate is not None else observed
        self.request_rate = max(MIN_REQUEST_RATE, min(current, max(current / 2, accepted)))
        resume_at = max(now, self.paused_until)
        # the buckets start empty when the pause ends: no burst right after a 429
        self._request_tat = resume_at + max(BURST_S, 1 / self.request_rate)
        if self.token_rate is not None:
            # like requests: down to the share of recent requests that were accepted, at most by half
            self.token_rate = max(1.0, self.token_rate * max(0.5, min(1.0, accepted / observed)))
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
            "held": self.held,
            "completion_mean": None
            if self.estimate.completion_mean is None
            else round(self.estimate.completion_mean, 1),
        }


_SHARED: dict[tuple, RateLimiter] = {}


def reset_shared_limiters() -> None:
    """Forget learned slow-downs (a new run starts at the configured ceilings)."""
    _SHARED.clear()


def shared_limiter(
    model: str, endpoint: str | None, rpm: float | None, tpm: float | None, tpm_counts: str = "used"
) -> RateLimiter:
    """The limiter every client of this process with the same model, endpoint and ceilings uses."""
    key = (model, endpoint, rpm, tpm, tpm_counts)
    limiter = _SHARED.get(key)
    if limiter is None:
        limiter = _SHARED[key] = RateLimiter(rpm, tpm, tpm_counts)
    return limiter


def use_limiter(
    model: str, endpoint: str | None, rpm: float | None, tpm: float | None, tpm_counts: str, limiter
) -> None:
    """Make `shared_limiter` hand out `limiter` for these settings (e.g. one shared by a Ray cluster)."""
    _SHARED[(model, endpoint, rpm, tpm, tpm_counts)] = limiter


def estimate_prompt_tokens(messages: list[dict]) -> int:
    """A cheap guess of a prompt's tokens: characters / 4, plus a few per message."""
    chars = sum(len(m.get("content") or "") if isinstance(m.get("content"), str) else 400 for m in messages)
    return chars // 4 + 4 * len(messages)
