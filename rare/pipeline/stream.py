"""The stream: the steps after the last barrier run at once, in one process and one asyncio loop.

Each row a step writes to its journal is handed at once to the next step's queue; a row step
works on its queue with its own concurrency window (its own client, rate limits, budget), a
corpus step whose pool is known at the start (`pool = "documents"`) answers micro-batches of
whatever rows are ready, in a thread of its own so the LLM steps keep going. Failed and filtered
rows stop where they are. The journals, failures and counts are the steps' `StepRun`s, as in a
run step after step; the caller finalizes each step file in input order when the stream ends,
so the files are the same bytes either way.

Resume is at row level: each step skips the rows it finished or that failed, and the rows the
step before had finished (in an earlier run) are fed to it first.
"""

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from rare.pipeline.circuit_breaker import CircuitBreaker
from rare.pipeline.progress import ProgressBoard, StepProgress
from rare.pipeline.step_contract import CorpusOperator, Operator, RowOperator
from rare.pipeline.step_run import StepRun, async_rows, flush_clients, run_rows
from rare.storage.journal import Journal, complete_length
from rare.storage.step_storage import StepStorage

log = logging.getLogger(__name__)

BATCH_WAIT_S = 0.2  # a corpus step's micro-batch: the rows ready now, and those that come within this
_END = object()  # a step's queue: the step before has finished every row


@dataclass
class StreamStep:
    """One step of the stream (index: its place in the run, 1-based; pool: the step `prepare` reads)."""

    op: Operator
    index: int
    pool: int
    skip: set[str]
    breaker: CircuitBreaker
    progress: StepProgress
    run: StepRun | None = None
    queue: asyncio.Queue | None = None  # rows the step before wrote in this run (None: the first step)
    earlier: list[tuple[Path, int]] = field(default_factory=list)  # the step before's journals as they were
    offered: int = 0  # rows the step before handed on (this run) or had already (earlier runs)
    remote: object | None = None  # a row step's stand-in whose `process` runs elsewhere (Ray actors); None: `op`


def run_stream(steps: list[StreamStep], storage: StepStorage, failures: Journal, board: ProgressBoard) -> None:
    """Run `steps` (consecutive, in run order) as one stream; every finished row ends in its step's
    journal. The caller finalizes the step files, in order, when it returns."""
    for step in steps:
        storage.reopen(step.index)  # its finished rows join its journal: more rows will
    for before, step in zip(steps, steps[1:]):
        step.earlier = [(j.path, complete_length(j.path)) for j in storage.journals(before.index) if j.path.exists()]
        step.offered = sum(_count_lines(path, length) for path, length in step.earlier)
    with ExitStack() as stack:
        stack.enter_context(board)
        for step in steps:
            journal = stack.enter_context(storage.journal(step.index))
            step.run = StepRun(step.op, journal, failures, step.progress, step.breaker)
            stack.callback(step.run.dropped.close)
            stack.enter_context(step.progress)
        asyncio.run(_stream(steps, storage))


async def _stream(steps: list[StreamStep], storage: StepStorage) -> None:
    for step in steps[1:]:
        step.queue = asyncio.Queue()
    for before, step in zip(steps, steps[1:]):
        before.run.downstream = _offer_to(step)
    tasks = [asyncio.create_task(_step(step, nxt, storage)) for step, nxt in zip(steps, [*steps[1:], None])]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _offer_to(step: StreamStep):
    def offer(row: dict) -> None:
        step.offered += 1
        step.queue.put_nowait(row)

    return offer


async def _step(step: StreamStep, nxt: StreamStep | None, storage: StepStorage) -> None:
    """Run one step over its input until the step before has ended; then tell the next one."""
    rows = _input(step, storage)
    if isinstance(step.op, RowOperator):
        try:
            await run_rows(step.remote or step.op, rows, step.run)
        finally:
            flush_clients(step.op)
    else:
        await _batches(step, rows, storage)
    if nxt is not None:
        nxt.progress.set_total(nxt.offered)
        nxt.queue.put_nowait(_END)


def _input(step: StreamStep, storage: StepStorage) -> AsyncIterator[dict]:
    """The step's rows to work on: its input file (the first step), or the rows the step before had
    written in earlier runs, then those it writes now."""
    if step.queue is None:
        return async_rows(step.run.pending(storage.read(step.index - 1), step.skip))
    return _streamed(step)


async def _streamed(step: StreamStep) -> AsyncIterator[dict]:
    seen: set[str] = set()
    for path, length in step.earlier:
        for row in _journal_rows(path, length):
            if row["id"] not in seen and step.run.take(row, step.skip):
                seen.add(row["id"])
                yield row
    while (row := await step.queue.get()) is not _END:
        if step.run.take(row, step.skip):
            yield row


async def _batches(step: StreamStep, rows: AsyncIterator[dict], storage: StepStorage) -> None:
    """A corpus step: `prepare` on its pool (while the first rows are being written), then micro-batches
    of whatever rows are ready, up to its batch_size, each searched in the step's own thread."""
    op: CorpusOperator = step.op
    ready: asyncio.Queue = asyncio.Queue()

    async def pump() -> None:
        try:
            async for row in rows:
                ready.put_nowait(row)
        finally:
            ready.put_nowait(_END)

    loop = asyncio.get_running_loop()
    thread = ThreadPoolExecutor(1, thread_name_prefix=f"rare-{op.name}")  # prepare and every batch: one thread
    pumper = asyncio.create_task(pump())
    try:
        await loop.run_in_executor(thread, op.prepare, storage.read(step.pool))
        ended = False
        while not ended:
            first = await ready.get()
            if first is _END:
                break
            batch, deadline = [first], loop.time() + BATCH_WAIT_S
            while len(batch) < op.batch_size:
                try:
                    row = ready.get_nowait()
                except asyncio.QueueEmpty:
                    try:
                        row = await asyncio.wait_for(ready.get(), deadline - loop.time())
                    except TimeoutError:
                        break
                if row is _END:
                    ended = True
                    break
                batch.append(row)
            step.run.started()
            step.progress.in_flight = len(batch)
            results = await loop.run_in_executor(thread, op.process_batch, batch)
            step.progress.in_flight = 0
            step.run.record_batch(batch, results)
        if pumper.done() and pumper.exception() is not None:
            raise pumper.exception()
    finally:
        pumper.cancel()
        await asyncio.gather(pumper, return_exceptions=True)
        await loop.run_in_executor(thread, _detach_from_java)
        thread.shutdown()


def _detach_from_java() -> None:
    """A thread that called Lucene (pyjnius) leaves the JVM before it ends."""
    if "jnius" in sys.modules:
        try:
            from jnius import detach

            detach()
        except Exception:  # never attached, or no JVM: nothing to leave
            pass


def _count_lines(path: Path, length: int) -> int:
    count = 0
    with open(path, "rb") as handle:
        while length > 0 and (chunk := handle.read(min(length, 1 << 20))):
            count += chunk.count(b"\n")
            length -= len(chunk)
    return count


def _journal_rows(path: Path, length: int) -> Iterator[dict]:
    """The complete rows of a journal in its first `length` bytes (what it held when the stream began)."""
    with open(path, "rb") as handle:
        position = 0
        for line in handle:
            position += len(line)
            if position > length:
                return
            try:
                yield json.loads(line)
            except ValueError:
                continue
