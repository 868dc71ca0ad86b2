"""What the LLM layer shares across the clients of one run, reset by the runner when a run starts."""

from rare.llm.budget import RunSpend, reset_run_budget
from rare.llm.rate_limit import reset_shared_limiters


def start_run(counter=None) -> RunSpend:
    """A run starts at $0 spent and at the configured rate ceilings.

    `counter` is an optional shared counter (e.g. `multiprocessing.Value("d", 0.0)`) for a
    multi-process executor; workers join it with `rare.llm.budget.use_counter`.
    """
    reset_shared_limiters()
    return reset_run_budget(counter)
