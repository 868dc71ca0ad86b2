"""What LLM calls cost: one client's running totals (`Usage`), and the sum of several (`merge_usage`).

A step reports its usage as `Usage.as_dict()`; the processes or actors that ran a step's rows each
report theirs, and `merge_usage` adds them up (the worker pool, Ray, a judge with its teacher).
"""

from dataclasses import dataclass, field


@dataclass
class Usage:
    """Running totals for one client (one step).

    `calls` were answered by the provider (online or in a batch) and cost `cost_usd`;
    `cached_calls` were answered by the response cache and cost nothing (`saved_usd` is what
    they cost when first asked). Tokens count both, as the provider reported them.
    `failed_calls` of the calls were billed but their answer was unusable (empty, cut,
    malformed): their tokens and cost are in the totals and, again, in `failed_tokens` and
    `failed_cost_usd`. `retries` counts every retry, `retried` them by cause (an error type,
    or a content fault: empty, length, unusable).
    """

    calls: int = 0
    cached_calls: int = 0
    retries: int = 0
    retried: dict[str, int] = field(default_factory=dict)
    failed_calls: int = 0
    failed_tokens: int = 0
    failed_cost_usd: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    saved_usd: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "calls": self.calls,
            "cached_calls": self.cached_calls,
            "retries": self.retries,
            "retried": dict(self.retried),
            "failed_calls": self.failed_calls,
            "failed_tokens": self.failed_tokens,
            "failed_cost_usd": round(self.failed_cost_usd, 6),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "saved_usd": round(self.saved_usd, 6),
            "errors": dict(self.errors),
        }

    def count_retry(self, cause: str) -> None:
        self.retries += 1
        self.retried[cause] = self.retried.get(cause, 0) + 1

    def count_unused(self, completion) -> None:
        """A billed answer (a `Completion`) that was not used; it is already in the totals."""
        self.failed_calls += 1
        self.failed_tokens += completion.prompt_tokens + completion.completion_tokens
        self.failed_cost_usd += completion.cost_usd


def merge_usage(usages: list[dict]) -> dict:
    """Sum usage dicts (of several processes, or several clients): numbers add up, counts by name merge."""
    total: dict = {}
    for usage in usages:
        for key, value in usage.items():
            if isinstance(value, dict):
                merged = total.setdefault(key, {})
                for name, count in value.items():
                    merged[name] = merged.get(name, 0) + count
            elif isinstance(value, (int, float)):
                total[key] = total.get(key, 0) + value
    return total
