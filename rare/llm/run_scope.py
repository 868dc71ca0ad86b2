"""What the LLM layer shares across the clients of one run, reset by the runner when a run starts."""

import multiprocessing

from rare.llm.budget import RunSpend, reset_run_budget
from rare.llm.rate_limit import reset_shared_limiters


def start_run(counter=None) -> RunSpend:
    """A run starts at $0 spent and at the configured rate ceilings.

    The spend lives in a shared counter (`multiprocessing.Value("d")` unless `counter` is
    given), so worker processes spawned with an LLM client add to the same budget: the client
    carries the counter when it is pickled for a spawned process (see `LLMClient.__getstate__`).
    """
    reset_shared_limiters()
    if counter is None:
        try:
            counter = multiprocessing.get_context("spawn").Value("d", 0.0)
        except OSError:  # no shared memory here: this process keeps the count alone
            counter = None
    return reset_run_budget(counter)
