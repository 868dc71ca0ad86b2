"""What a failed call becomes: `ProviderRejected` when no row can succeed, else the error tagged
with its `failure_kind` (the kinds `failed.jsonl` and `retry_failed` use)."""

from rare.errors import RunAborted
from rare.llm import litellm  # imported on first use
from rare.llm.content import ERROR, RATE_LIMITED, REFUSED, TRANSIENT
from rare.llm.retry import is_rate_limited, is_transient


class ProviderRejected(RunAborted):
    """The provider refuses every request (bad key, unknown model): stop instead of failing each row."""


def classified(error: Exception, model: str, key_setting: str, errors: dict[str, int]) -> Exception:
    """The error to raise for a failed call; counts it in `errors` by type unless the run stops."""
    if isinstance(error, (litellm.AuthenticationError, litellm.PermissionDeniedError, litellm.NotFoundError)):
        rejected = ProviderRejected(
            f"the provider refused {model}: {type(error).__name__}: {str(error).replace(chr(10), ' ')[:300]}. "
            f"Check the API key ({key_setting}) and the model name (llm.model); "
            f"finished rows are kept, rerun with resume to continue."
        )
        rejected.__cause__ = error
        return rejected
    name = type(error).__name__
    errors[name] = errors.get(name, 0) + 1
    if is_rate_limited(error):
        error.failure_kind = RATE_LIMITED
    elif is_transient(error):
        error.failure_kind = TRANSIENT
    elif getattr(error, "status_code", None) in (400, 422) or isinstance(error, litellm.BadRequestError):
        error.failure_kind = REFUSED  # the provider refuses this request itself (content filter, bad input)
    else:
        error.failure_kind = ERROR
    return error
