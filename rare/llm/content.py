"""Is an answer usable, and which cached answer answers which request.

A 200 can still carry an answer no step can use: empty content, JSON cut in half or
malformed (a step's `check` says so), or text cut at the token cap (`finish_reason=length`).
`content_fault` names the problem; the client asks such a request again as a fresh call.
A content filter's refusal is final. A fault that repeats is not a glitch: the same unusable text twice in a row (a deterministic
model or a prompt it cannot answer), or a second cut at the cap (the cap is too small for
this answer: only raising it helps, and the failure reason says so).

Cache keys leave out the parameters that cannot change a finished answer (`request_for_key`):
- the answer cap (`max_tokens`, `max_completion_tokens`) only ends generation early. An answer
  that finished by itself (`stop`) with fewer tokens than its cap is what the same request
  generates under any cap above its length, so it is reused when the cap is raised, and a
  rerun after `llm.params.max_tokens` grew asks only the answers that were cut. A cut answer
  answers only the request with the same cap.
- `user`, `metadata`, `store`, `service_tier`, `stream`, `stream_options`, `timeout` are
  bookkeeping and transport: who asked, whether the provider keeps a copy, how the answer
  travels, how long to wait. They are not shown to the model.
"""

from collections.abc import Callable

from rare.errors import RowError
from rare.llm.parsing import ParseError

CAP_PARAMS = ("max_tokens", "max_completion_tokens")
TRANSPORT_PARAMS = ("user", "metadata", "store", "service_tier", "stream", "stream_options", "timeout")

# Failure kinds (failed.jsonl `kind`, `retry_failed=<kind>`) the LLM layer uses.
LENGTH, EMPTY, UNUSABLE = "length", "empty", "unusable"
REFUSED, RATE_LIMITED, TRANSIENT, ERROR = "refused", "rate_limited", "transient", "error"
FAILURE_KINDS = (LENGTH, EMPTY, UNUSABLE, REFUSED, RATE_LIMITED, TRANSIENT, ERROR, "row")


class UnusableAnswer(RowError):
    """Every attempt at a request gave an answer that cannot be used; `text` is the last one."""

    def __init__(self, message: str, kind: str = UNUSABLE, text: str = "", reason: str | None = None):
        super().__init__(message, kind)
        self.text = text
        self.reason = reason or message  # without the attempt count


def answer_cap(kwargs: dict) -> int | None:
    """The request's completion-token cap, None without one."""
    for name in CAP_PARAMS:
        if kwargs.get(name):
            return int(kwargs[name])
    return None


def request_for_key(kwargs: dict) -> dict:
    """The request without the parameters that cannot change a finished answer (see the module doc)."""
    return {k: v for k, v in kwargs.items() if k not in CAP_PARAMS and k not in TRANSPORT_PARAMS}


def answers_under(stored: dict, cap: int | None) -> bool:
    """Whether a stored answer is the answer to its request asked with `cap`."""
    if stored.get("max_tokens") == cap:
        return True
    if stored.get("finish_reason") == "length":
        return False  # cut at another cap: the new cap may let it finish, or cut it elsewhere
    return cap is None or int(stored.get("completion_tokens") or 0) < cap


def cut_at_cap(completion_tokens: int, cap: int | None) -> bool:
    """A `length` finish at the cap (a real cut), not one far below it (a glitch)."""
    return cap is None or not completion_tokens or completion_tokens >= cap


def content_fault(
    text: str,
    finish_reason: str | None,
    completion_tokens: int,
    cap: int | None,
    check: Callable | None,
    allow_cut: bool,
) -> tuple[str, str] | None:
    """(kind, reason) of what makes an answer unusable, None for a usable one."""
    if finish_reason == "content_filter":
        return REFUSED, "the provider's content filter withheld the answer (finish_reason=content_filter)"
    if not text.strip():
        return EMPTY, "the answer was empty"
    if finish_reason == "length" and not (allow_cut and cut_at_cap(completion_tokens, cap)):
        if cut_at_cap(completion_tokens, cap):
            return LENGTH, cap_reason(cap, completion_tokens)
        return LENGTH, (
            f"the answer stopped with finish_reason=length after {completion_tokens} tokens, below the cap of {cap} "
            "(a glitch, or a full context window)"
        )
    if check is not None:
        try:
            check(text)
        except ParseError as error:
            return UNUSABLE, str(error)
    return None


def cap_reason(cap: int | None, completion_tokens: int) -> str:
    setting = (
        f"llm.params.max_tokens (now {cap})" if cap else "llm.params.max_tokens (not set: the provider's default cap)"
    )
    return f"the answer was cut at the token cap (finish_reason=length, {completion_tokens} tokens); raise {setting}"


def repeats(faults: list[tuple[str, str, str, bool]]) -> bool:
    """Whether the last fault is one more attempts will not fix.

    `faults` holds (kind, reason, text, cut at the cap) per attempt so far: a second cut at the
    cap, or the same unusable text as the attempt before. Empty answers and cuts short of the
    cap are glitches however alike they look: they are retried until `content_retries` runs out.
    """
    if faults and faults[-1][0] == REFUSED:
        return True  # the provider refuses this request itself
    if len(faults) < 2:
        return False
    (kind, _, text, _), (last_kind, _, last_text, last_at_cap) = faults[-2], faults[-1]
    if last_kind == LENGTH:
        return last_at_cap and any(k == LENGTH and at_cap for k, _, _, at_cap in faults[:-1])
    return last_kind == UNUSABLE and kind == UNUSABLE and text == last_text
