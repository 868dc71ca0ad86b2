"""Which provider errors are worth retrying, and how long to wait (Retry-After first)."""

import random

from rare.llm import litellm  # imported on first use

TRANSIENT_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 529}


def is_transient(error: BaseException) -> bool:
    """Rate limits, server errors, timeouts and dropped connections; never auth or bad requests."""
    transient_types = (  # looked up here, not at import: litellm loads on first use (rare.llm)
        litellm.RateLimitError,
        litellm.Timeout,
        litellm.APIConnectionError,
        litellm.InternalServerError,
        litellm.ServiceUnavailableError,
    )
    if isinstance(error, transient_types):
        return True
    return getattr(error, "status_code", None) in TRANSIENT_STATUS


def is_rate_limited(error: BaseException) -> bool:
    """A 429: the provider asks us to slow down."""
    return isinstance(error, litellm.RateLimitError) or getattr(error, "status_code", None) == 429


def retry_after_seconds(error: BaseException) -> float | None:
    """The provider's Retry-After (seconds or retry-after-ms), if it sent one."""
    headers = {}
    response = getattr(error, "response", None)
    if response is not None and getattr(response, "headers", None) is not None:
        headers.update({k.lower(): v for k, v in response.headers.items()})
    extra = getattr(error, "litellm_response_headers", None)
    if extra:
        headers.update({k.lower(): v for k, v in dict(extra).items()})
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            continue
    return None


def wait_for_retry(base_s: float, max_s: float):
    """A tenacity wait: Retry-After when given, else exponential backoff with full jitter."""

    def wait(retry_state) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        advised = retry_after_seconds(error) if error is not None else None
        if advised is not None:
            return min(advised, max_s)
        ceiling = min(max_s, base_s * 2 ** (retry_state.attempt_number - 1))
        return random.uniform(ceiling / 2, ceiling)

    return wait
