"""The default executor: asyncio in this process, or a pool of worker processes for a big step."""

from rare.execute import StepRun, run_row_step
from rare.operator import Operator, RowOperator
from rare.storage.step_storage import StepStorage
from rare.workers import MIN_ROWS_PER_WORKER, WorkerPool


def workers_for(op: Operator, pending: int) -> int:
    """Worker processes for a row step: its configured count, unless too few rows pay for starting them."""
    workers = int(getattr(op, "workers", 1) or 1) if isinstance(op, RowOperator) else 1
    return min(workers, max(1, pending // MIN_ROWS_PER_WORKER))


class LocalExecutor:
    """Runs a row step on this machine: one event loop, or `llm.workers` worker processes."""

    def run_row_step(self, run: StepRun, storage: StepStorage, index: int, skip: set[str], pending: int) -> dict | None:
        workers = workers_for(run.op, pending)
        if workers > 1:
            return WorkerPool(workers).run_row_step(run, storage, index, skip, pending)
        run_row_step(run.op, storage.read(index - 1), run, skip)
        return None

    def close(self) -> None:
        """Nothing to release."""
