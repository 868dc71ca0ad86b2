"""litellm's own per-call success logging, skipped while no litellm callback listens to it.

After every answered async call litellm queues a coroutine on its logging worker (one per process,
run in the call's event loop) that builds a logging payload and runs the registered callbacks. On a
busy loop (a stream of two LLM steps on 2 cores) that worker falls behind the calls, and its queue
(up to 50,000 entries, `LOGGING_WORKER_MAX_QUEUE_SIZE`) grows with every call, each entry holding
the call's `Logging` object, request and response: a 20k-document stream grew a process by
~215 MiB (`benchmarks/llm_throughput.py`, section 5). rare registers no litellm callback and counts usage and
cost itself, from the response, so each call runs as one of litellm's internal calls (the
`is_internal_call` flag its own nested calls set), which queues nothing and saves ~0.3 ms of CPU.
litellm has no public setting for this; a user who registers a callback keeps litellm's logging.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from rare.llm import litellm  # imported on first use

CALLBACK_LISTS = (  # where litellm keeps callbacks: any one in them listens
    "callbacks",
    "input_callback",
    "success_callback",
    "failure_callback",
    "_async_input_callback",
    "_async_success_callback",
    "_async_failure_callback",
)


def _internal_call_flag() -> ContextVar | None:
    """litellm's flag for its own nested calls; None in a litellm without it."""
    try:
        from litellm._internal_context import is_internal_call
    except ImportError:
        return None
    return is_internal_call


def callbacks_registered() -> bool:
    """Whether anything listens to litellm's per-call logging (a callback in any of its lists)."""
    return any(getattr(litellm, name, None) for name in CALLBACK_LISTS)


@contextmanager
def unlogged_calls() -> Iterator[None]:
    """The litellm calls made inside (in this task) queue no success logging, unless a callback is
    registered."""
    flag = _internal_call_flag()
    if flag is None or callbacks_registered():
        yield
        return
    token = flag.set(True)
    try:
        yield
    finally:
        flag.reset(token)
