"""The default executor: asyncio in this process, or a pool of worker processes for a big step."""

import logging

from rare.errors import ConfigError
from rare.executors.local.workers import MIN_ROWS_PER_WORKER, WorkerPool, step_workers
from rare.pipeline.step_contract import Operator, RowOperator
from rare.pipeline.step_run import StepRun, run_row_step
from rare.storage.step_storage import StepStorage

log = logging.getLogger(__name__)


def workers_for(op: Operator, pending: int, configured: int | None = None) -> int:
    """Processes for a row step: what `step_workers` gives its LLM client, unless too few rows pay
    for starting them; a row step without an LLM runs in one."""
    clients = op.clients() if isinstance(op, RowOperator) else []
    if not clients:
        return 1
    llm = clients[0]  # the step's own client
    workers = step_workers(configured, llm.workers, llm.rpm, llm.tpm, llm.server is not None)
    return min(workers, max(1, pending // MIN_ROWS_PER_WORKER))


class LocalExecutor:
    """Runs a row step on this machine: one event loop, or a `WorkerPool` of processes for a big step.

    Args:
        workers: processes a big LLM row step is sharded over (0 = one per core); None = each
            step's default: one per core, or one for the embedded model or under an `rpm` up to
            9,000 or a `tpm` alone (see `rare.executors.local.workers`). Each process paces at its share of
            `rpm` / `tpm`.
        streaming: true = the steps after the last barrier run at once, each row handed on as soon
            as it is ready (`rare.pipeline.stream`); in one process for now, so not with `workers`
            above 1 (or 0), which run step after step.
    """

    def __init__(self, workers: int | None = None, streaming: bool = False):
        if workers is not None and int(workers) < 0:
            raise ConfigError(f"executor.workers must be 0 (one per core) or more, got {workers}")
        self.workers = None if workers is None else int(workers)
        self.streaming = bool(streaming)

    def streams(self) -> bool:
        """Whether the runner may stream the steps after the last barrier (in this one process)."""
        if self.streaming and self.workers not in (None, 1):
            log.warning(
                "executor.streaming=true runs in one process for now: with executor.workers=%d the steps run "
                "one after the other (set executor.workers=1 to stream)",
                self.workers,
            )
            return False
        return self.streaming

    def run_row_step(self, run: StepRun, storage: StepStorage, index: int, skip: set[str], pending: int) -> dict | None:
        workers = workers_for(run.op, pending, self.workers)
        if workers > 1:
            return WorkerPool(workers).run_row_step(run, storage, index, skip, pending)
        run_row_step(run.op, storage.read(index - 1), run, skip)
        return None

    def close(self) -> None:
        """Nothing to release."""
