"""Running one step over rows: bounded async concurrency for row steps, batches for corpus steps.

Every finished row is appended to the step's journal at once; failures go to the run's
failure journal with their reason. Rows already in the journal (a resumed run) are skipped.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

from rare.errors import RowError, RowFiltered, RunAborted
from rare.pipeline.circuit_breaker import CircuitBreaker
from rare.pipeline.progress import StepProgress
from rare.pipeline.step_contract import CorpusOperator, Operator, RowOperator
from rare.storage.journal import Journal

DROPPED_FILE = "dropped.jsonl"  # beside failed.jsonl: rows a filter removed on purpose, with the reason


@dataclass
class StepCounts:
    done: int = 0
    failed: int = 0
    resumed: int = 0
    filtered: int = 0


def already_done(op: Operator, row_id: str, done_ids: set[str]) -> bool:
    """The row failed or was filtered (its own id is listed), or every row it fans out to is written."""
    return row_id in done_ids or done_ids.issuperset(op.row_ids(row_id))


def _reason(error: BaseException) -> str:
    if isinstance(error, RowError):
        return str(error)
    return f"{type(error).__name__}: {str(error).strip()[:500]}"


class StepRun:
    """Shared bookkeeping of one step: journal, failures, counts, progress."""

    def __init__(
        self,
        op: Operator,
        journal: Journal,
        failures: Journal,
        progress: StepProgress,
        breaker: CircuitBreaker | None = None,
    ):
        self.op, self.journal, self.failures, self.progress = op, journal, failures, progress
        self.breaker = breaker or CircuitBreaker(window=0)
        self.counts = StepCounts()
        self.dropped = Journal(failures.path.with_name(DROPPED_FILE))  # opened on the first filtered row
        self.downstream: Callable[[dict], None] | None = None  # streaming: the next step takes each row written
        self.first_at: float | None = None  # when the step took its first row to work on, and wrote its last
        self.last_at: float | None = None

    def started(self) -> None:
        if self.first_at is None:
            self.first_at = time.time()

    def _ended(self) -> None:
        self.last_at = time.time()

    def finished(self, row: dict, fields: dict | list[dict]) -> None:
        items, ids = fields if isinstance(fields, list) else [fields], self.op.row_ids(row["id"])
        if len(items) != len(ids):  # a fan-out step owes exactly the rows it announced
            return self.failed(row, RowError(f"the step returned {len(items)} rows for this row, expected {len(ids)}"))
        for row_id, item in zip(ids, items):
            line = self.journal.append({**row, **self.op.to_columns(item), "id": row_id})
            if self.downstream is not None:  # the row as the next step would read it from the step file
                self.downstream(json.loads(line))
        self._ended()
        self.counts.done += 1
        self.progress.advance(done=1)
        self.breaker.record(True, self.op.name)

    def failed(self, row: dict, error: BaseException) -> None:
        reason = _reason(error)
        self._ended()
        if isinstance(error, RowFiltered):  # removed on purpose: recorded, not a failure
            self.dropped.append({"step": self.op.name, "id": row.get("id"), "reason": reason})
            self.counts.filtered += 1
            self.progress.advance(done=1)
            return
        kind = getattr(error, "failure_kind", None) or "error"  # `retry_failed=<kind>` asks these rows again
        self.failures.append({"step": self.op.name, "id": row.get("id"), "reason": reason, "kind": kind})
        self.counts.failed += 1
        self.progress.advance(failed=1)
        self.breaker.record(False, self.op.name, reason)

    def take(self, row: dict, done_ids: set[str]) -> bool:
        """Whether `row` is to be worked on; a row finished or failed before is counted as resumed."""
        if already_done(self.op, row["id"], done_ids):
            self.counts.resumed += 1
            self.progress.advance(done=1, resumed=True)
            return False
        return True

    def pending(self, rows: Iterable[dict], done_ids: set[str]) -> Iterator[dict]:
        return (row for row in rows if self.take(row, done_ids))

    def record_batch(self, batch: list[dict], results: list) -> None:
        """The outcomes of a corpus step's batch, in the batch's order."""
        for row, result in zip(batch, results):
            if isinstance(result, BaseException):
                self.failed(row, result)
            else:
                self.finished(row, result)


async def async_rows(rows: Iterable[dict]) -> AsyncIterator[dict]:
    for row in rows:
        yield row


async def run_rows(op: RowOperator, rows: Iterable[dict] | AsyncIterator[dict], run: StepRun) -> None:
    """Run `op.process` on `rows` (a plain or an async iterator), a bounded window at a time; each
    outcome goes to `run` as soon as it is ready, also while the next rows are still to come."""
    window = max(1, op.concurrency) * 2  # keeps the provider busy without reading every row up front
    in_flight: dict[asyncio.Task, dict] = {}
    finished: asyncio.Queue[asyncio.Task | None] = asyncio.Queue()  # O(1) per row, unlike asyncio.wait
    slots = asyncio.Semaphore(window)
    source = rows if hasattr(rows, "__aiter__") else async_rows(rows)

    def collect(task: asyncio.Task) -> None:
        row = in_flight.pop(task)
        slots.release()
        run.progress.in_flight = len(in_flight)
        error = task.exception()
        if error is None:
            run.finished(row, task.result())
        elif isinstance(error, Exception) and not isinstance(error, RunAborted):
            run.failed(row, error)
        else:
            raise error

    async def feed() -> None:
        async for row in source:
            await slots.acquire()
            run.started()
            task = asyncio.create_task(op.process(row))
            in_flight[task] = row
            run.progress.in_flight = len(in_flight)
            task.add_done_callback(finished.put_nowait)

    feeder = asyncio.create_task(feed())
    feeder.add_done_callback(lambda _: finished.put_nowait(None))  # None: no more rows will come
    try:
        fed = False
        while not fed or in_flight:
            task = await finished.get()
            if task is None:
                fed = True
                if feeder.exception() is not None:
                    raise feeder.exception()
            else:
                collect(task)
    finally:
        feeder.cancel()
        for task in in_flight:
            task.cancel()
        await asyncio.gather(feeder, *in_flight, return_exceptions=True)
        run.progress.in_flight = 0


def flush_clients(op: Operator) -> None:
    for client in op.clients():
        client.flush()  # the answers the response cache still keeps in memory


def run_row_step(op: RowOperator, rows: Iterable[dict], run: StepRun, done_ids: set[str]) -> None:
    try:
        asyncio.run(run_rows(op, run.pending(rows, done_ids), run))
    finally:
        flush_clients(op)


def run_corpus_step(
    op: CorpusOperator, corpus: Iterable[dict], rows: Iterable[dict], run: StepRun, done_ids: set[str]
) -> None:
    op.prepare(corpus)
    pending = run.pending(rows, done_ids)
    while batch := list(islice(pending, op.batch_size)):
        run.started()
        run.record_batch(batch, op.process_batch(batch))
