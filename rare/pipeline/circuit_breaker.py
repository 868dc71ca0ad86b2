"""Stop a run cleanly when a step's rows keep failing, instead of hammering a dead provider."""

from collections import deque

from rare.errors import RunAborted


class ProviderDown(RunAborted):
    """Most recent rows failed even after retries; the run stops and can be resumed."""


class CircuitBreaker:
    """Watches the last `window` rows of a step; trips when more than `max_failure_rate` failed.

    Every failed row has already been retried with backoff by the LLM client, so a tripped
    breaker means the provider (or the prompt) is broken, not a passing hiccup.
    """

    def __init__(self, window: int = 50, max_failure_rate: float = 0.9):
        self.window = int(window)
        self.max_failure_rate = float(max_failure_rate)
        self._outcomes: deque[bool] = deque(maxlen=max(1, self.window))

    def record(self, ok: bool, step: str, reason: str | None = None) -> None:
        self._outcomes.append(ok)
        if self.window <= 0 or len(self._outcomes) < self.window:
            return
        failed = self._outcomes.count(False)
        if failed / len(self._outcomes) > self.max_failure_rate:
            raise ProviderDown(
                f"step '{step}': {failed} of the last {len(self._outcomes)} rows failed after retries "
                f"(latest: {reason}). Stopped to avoid hammering a failing provider; every finished row is "
                f"kept. Fix the cause, then continue with `rare resume=<this run dir>`."
            )
