"""Requests- and tokens-per-minute limits the test server enforces, the way hosted providers do.

Each limit is a bucket holding `burst_s` seconds of its rate, full at the start and refilled
continuously. A request that does not fit is refused with 429, `Retry-After` (and
`retry-after-ms`) saying when it would fit; every answer carries `x-ratelimit-limit-*`,
`x-ratelimit-remaining-*` and `x-ratelimit-reset-*` headers (reset: the time until the
bucket is full again, as OpenAI words it: `20ms`, `1.5s`).

What the token bucket counts (`tpm_counts`):
- `used`: the prompt when the request arrives, the completion when the answer is sent
  (the bucket may go below zero then; later requests wait until it has refilled);
- `max_tokens`: the prompt plus the request's `max_tokens` up front, the unused part given
  back with the answer (Anthropic's output-token limits work this way).
"""

from __future__ import annotations

import time

TPM_COUNTS = ("used", "max_tokens")


class Bucket:
    """A continuously refilled bucket of `rate` units per second holding at most `burst_s` seconds of it."""

    def __init__(self, per_minute: float, burst_s: float):
        self.per_minute = float(per_minute)
        self.rate = self.per_minute / 60
        self.capacity = max(1.0, self.rate * burst_s)
        self.level = self.capacity
        self.at = time.monotonic()

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` fits (0 when it does now)."""
        return max(0.0, (min(amount, self.capacity) - self.level) / self.rate)

    def headers(self, name: str) -> dict[str, str]:
        reset = (self.capacity - self.level) / self.rate
        return {
            f"x-ratelimit-limit-{name}": f"{self.per_minute:g}",
            f"x-ratelimit-remaining-{name}": str(max(0, int(self.level))),
            f"x-ratelimit-reset-{name}": duration_text(reset),
        }


def duration_text(seconds: float) -> str:
    """`20ms`, `1.5s`: how OpenAI writes a reset time."""
    seconds = max(0.0, seconds)
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.3f}s"


class RateLimits:
    """The server's limits: `rpm` requests and `tpm` tokens per minute (None = none)."""

    def __init__(self, rpm: float | None, tpm: float | None, burst_s: float, tpm_counts: str):
        if tpm_counts not in TPM_COUNTS:
            raise ValueError(f"tpm_counts must be one of {TPM_COUNTS}, got {tpm_counts!r}")
        self.requests = Bucket(rpm, burst_s) if rpm else None
        self.tokens = Bucket(tpm, burst_s) if tpm else None
        self.tpm_counts = tpm_counts
        self.refused = 0

    @property
    def active(self) -> bool:
        return self.requests is not None or self.tokens is not None

    def admit(self, prompt_tokens: int, cap: int | None) -> tuple[float, int]:
        """(0, tokens charged) when the request may go on; (seconds to wait, 0) when it is refused."""
        now = time.monotonic()
        charge = prompt_tokens + (int(cap or 0) if self.tpm_counts == "max_tokens" else 0)
        wait = 0.0
        for bucket, amount in ((self.requests, 1), (self.tokens, charge)):
            if bucket is not None:
                bucket.refill(now)
                wait = max(wait, bucket.wait_for(amount))
        if wait > 0:
            self.refused += 1
            return wait, 0
        if self.requests is not None:
            self.requests.level -= 1
        if self.tokens is not None:
            self.tokens.level -= charge
        return 0.0, charge

    def settle(self, charged: int, prompt_tokens: int, completion_tokens: int) -> None:
        """The answer is out: the token bucket counts what the request really used."""
        if self.tokens is not None:
            self.tokens.refill(time.monotonic())
            self.tokens.level -= prompt_tokens + completion_tokens - charged

    def headers(self) -> dict[str, str]:
        now = time.monotonic()
        headers: dict[str, str] = {}
        for bucket, name in ((self.requests, "requests"), (self.tokens, "tokens")):
            if bucket is not None:
                bucket.refill(now)
                headers.update(bucket.headers(name))
        return headers

    @staticmethod
    def retry_headers(wait: float) -> dict[str, str]:
        return {"Retry-After": f"{max(1, round(wait + 0.5))}", "retry-after-ms": f"{wait * 1000:.0f}"}
