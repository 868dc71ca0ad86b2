"""Running one step over rows: bounded async concurrency for row steps, batches for corpus steps.

Every finished row is appended to the step's journal at once; failures go to the run's
failure journal with their reason. Rows already in the journal (a resumed run) are skipped.
"""

import asyncio
from collections.abc import Iterable, Iterator
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

    def finished(self, row: dict, fields: dict | list[dict]) -> None:
        items, ids = fields if isinstance(fields, list) else [fields], self.op.row_ids(row["id"])
        if len(items) != len(ids):  # a fan-out step owes exactly the rows it announced
            return self.failed(row, RowError(f"the step returned {len(items)} rows for this row, expected {len(ids)}"))
        for row_id, item in zip(ids, items):
            self.journal.append({**row, **self.op.to_columns(item), "id": row_id})
        self.counts.done += 1
        self.progress.advance(done=1)
        self.breaker.record(True, self.op.name)

    def failed(self, row: dict, error: BaseException) -> None:
        reason = _reason(error)
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

    def pending(self, rows: Iterable[dict], done_ids: set[str]) -> Iterator[dict]:
        for row in rows:
            if already_done(self.op, row["id"], done_ids):
                self.counts.resumed += 1
                self.progress.advance(done=1, resumed=True)
            else:
                yield row


async def _run_rows(op: RowOperator, rows: Iterator[dict], run: StepRun) -> None:
    window = max(1, op.concurrency) * 2  # keeps the provider busy without reading every row up front
    in_flight: dict[asyncio.Task, dict] = {}
    finished: asyncio.Queue[asyncio.Task] = asyncio.Queue()  # O(1) per row, unlike asyncio.wait over the window

    def collect(task: asyncio.Task) -> None:
        row = in_flight.pop(task)
        error = task.exception()
        if error is None:
            run.finished(row, task.result())
        elif isinstance(error, Exception) and not isinstance(error, RunAborted):
            run.failed(row, error)
        else:
            raise error

    async def collect_next() -> None:
        collect(await finished.get())
        while not finished.empty():
            collect(finished.get_nowait())

    try:
        for row in rows:
            while len(in_flight) >= window:
                await collect_next()
            task = asyncio.create_task(op.process(row))
            in_flight[task] = row
            task.add_done_callback(finished.put_nowait)
        while in_flight:
            await collect_next()
    finally:
        for task in in_flight:
            task.cancel()
        if in_flight:
            await asyncio.gather(*in_flight, return_exceptions=True)


def run_row_step(op: RowOperator, rows: Iterable[dict], run: StepRun, done_ids: set[str]) -> None:
    try:
        asyncio.run(_run_rows(op, run.pending(rows, done_ids), run))
    finally:
        for client in op.clients():
            client.flush()  # the answers the response cache still keeps in memory


def run_corpus_step(
    op: CorpusOperator, corpus: Iterable[dict], rows: Iterable[dict], run: StepRun, done_ids: set[str]
) -> None:
    op.prepare(corpus)
    pending = run.pending(rows, done_ids)
    while batch := list(islice(pending, op.batch_size)):
        for row, result in zip(batch, op.process_batch(batch)):
            if isinstance(result, BaseException):
                run.failed(row, result)
            else:
                run.finished(row, result)
