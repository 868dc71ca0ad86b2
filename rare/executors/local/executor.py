"""The default executor: asyncio in this process, or a pool of worker processes for a big step."""

import logging

from rare.errors import ConfigError
from rare.executors.local.stream_pool import can_stand_in, run_stream_pool
from rare.executors.local.workers import MIN_ROWS_PER_WORKER, WorkerPool, parent_waits, step_workers
from rare.pipeline.step_contract import CorpusOperator, Operator, RowOperator
from rare.pipeline.step_run import StepRun, run_row_step
from rare.pipeline.stream import StreamStep, run_stream
from rare.storage.journal import Journal
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
            as it is ready (`rare.pipeline.stream`); a big stream runs over as many processes as its
            biggest LLM step would (`rare.executors.local.stream_pool`).
    """

    def __init__(self, workers: int | None = None, streaming: bool = True):
        if workers is not None and int(workers) < 0:
            raise ConfigError(f"executor.workers must be 0 (one per core) or more, got {workers}")
        self.workers = None if workers is None else int(workers)
        self.streaming = bool(streaming)

    def streams(self) -> bool:
        """Whether the runner streams the steps after the last barrier (`run_stream`)."""
        return self.streaming

    def run_stream(self, steps: list[StreamStep], storage: StepStorage, failures: Journal, board, pending: int) -> None:
        """Run `steps` as one stream: in this process, or over the processes its biggest LLM step would
        take for `pending` rows (a corpus step that writes its rows its own way keeps it in one)."""
        workers = max(workers_for(step.op, pending, self.workers) for step in steps)
        stays = [s.op.name for s in steps if isinstance(s.op, CorpusOperator) and not can_stand_in(s.op)]
        if workers > 1 and stays:
            log.warning("streaming in one process: step '%s' can only run where its index is", stays[0])
            workers = 1
        names = ", ".join(step.op.name for step in steps)
        if workers == 1:
            log.info("streaming %s in one process: each row goes on as soon as it is ready", names)
            return run_stream(steps, storage, failures, board)
        where = "worker processes (this one coordinates)" if parent_waits() else "processes"
        log.info("streaming %s over %d %s: each row goes on as soon as it is ready", names, workers, where)
        run_stream_pool(steps, storage, failures, board, workers)

    def run_row_step(self, run: StepRun, storage: StepStorage, index: int, skip: set[str], pending: int) -> dict | None:
        workers = workers_for(run.op, pending, self.workers)
        if workers > 1:
            return WorkerPool(workers).run_row_step(run, storage, index, skip, pending)
        run_row_step(run.op, storage.read(index - 1), run, skip)
        return None

    def close(self) -> None:
        """Nothing to release."""
