"""The run-wide spending tracker behind `llm.max_cost_usd`.

Every client of a run adds what its calls cost to one counter per process; the runner
resets it when a run starts. A multi-process executor can pass a shared counter (anything
with `.value` and `.get_lock()`, e.g. `multiprocessing.Value("d", 0.0)`) to
`reset_run_budget` in the parent and to `use_counter` in each worker, so every process
sees what the whole run has spent.

A call starts only while the run has spent less than the budget; calls in flight when it is
reached still finish and are counted, so a run can overshoot by at most the calls in flight.
"""

import threading

from rare.errors import RunAborted


class BudgetExceeded(RunAborted):
    """`llm.max_cost_usd` is reached: the step stops, finished rows are kept."""


class _LocalCounter:
    """The single-process stand-in for `multiprocessing.Value("d")`."""

    def __init__(self, value: float = 0.0):
        self.value = value
        self._lock = threading.Lock()

    def get_lock(self):
        return self._lock


class RunSpend:
    """USD spent by the run so far, across every client."""

    def __init__(self, counter=None):
        self.counter = counter if counter is not None else _LocalCounter()

    @property
    def spent_usd(self) -> float:
        return float(self.counter.value)

    def add(self, usd: float) -> None:
        if usd:
            with self.counter.get_lock():
                self.counter.value += usd

    def check(self, limit_usd: float | None) -> None:
        """Raise BudgetExceeded if a paid call must not start."""
        if limit_usd is not None and self.counter.value >= limit_usd:
            raise BudgetExceeded(
                f"the budget llm.max_cost_usd={limit_usd:g} is reached (spent ${self.spent_usd:.4f}); "
                "finished rows are kept: raise llm.max_cost_usd and resume the run to continue"
            )


_RUN = RunSpend()


def run_spend() -> RunSpend:
    """The tracker of the current run in this process."""
    return _RUN


def reset_run_budget(counter=None) -> RunSpend:
    """Start a run at $0 spent; `counter` is an optional shared counter (see the module doc)."""
    global _RUN
    if counter is not None:
        with counter.get_lock():
            counter.value = 0.0
    _RUN = RunSpend(counter)
    return _RUN


def use_counter(counter) -> RunSpend:
    """In a worker process: add to the parent's shared counter (without resetting it)."""
    global _RUN
    _RUN = RunSpend(counter)
    return _RUN
