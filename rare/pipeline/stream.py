"""The stream: the steps after the last barrier run at once, in one asyncio loop per process.

Each row a step writes to its journal is handed at once to the next step's queue; a row step
works on its queue with its own concurrency window (its own client, rate limits, budget), a
corpus step whose pool is known at the start (`pool = "documents"`) answers micro-batches of
whatever rows are ready, in a thread of its own so the LLM steps keep going. A step's queue is
bounded (`BACKLOG_ROWS`): the step before takes no new row while it is full, so memory does not
grow with the corpus. Failed and filtered rows stop where they are. The journals, failures and
counts are the steps' `StepRun`s, as in a run step after step; the caller finalizes each step
file in input order when the stream ends, so the files are the same bytes either way.

Several processes can each run the whole stream over a share of the rows
(`rare.executors.local.stream_pool`): `StreamStep.share` picks the process's chunks of a step's
input, and a corpus step's batches are answered where its index lives (`StreamStep.batches`).

Resume is at row level: each step skips the rows it finished or that failed, and the rows the
step before had finished (in an earlier run) are fed to it first.
"""

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rare.llm.usage import merge_usage
from rare.pipeline.circuit_breaker import CircuitBreaker
from rare.pipeline.progress import ProgressBoard, StepProgress
from rare.pipeline.step_contract import CorpusOperator, Operator, RowOperator
from rare.pipeline.step_run import StepCounts, StepRun, async_rows, flush_clients, run_rows
from rare.storage.journal import Journal, complete_length, complete_lines
from rare.storage.step_storage import StepStorage

log = logging.getLogger(__name__)

BATCH_WAIT_S = 0.2  # a corpus step's micro-batch: the rows ready now, and those that come within this
BACKLOG_ROWS = 1024  # rows waiting in a step's queue at most: the step before takes no new row while it is full
_END = object()  # a step's queue: the step before has finished every row


class Backlog:
    """A step's queue of the rows the step before wrote in this run, with room for `limit` of them."""

    def __init__(self, limit: int = BACKLOG_ROWS):
        self._rows: asyncio.Queue = asyncio.Queue()
        self._limit = limit
        self._room = asyncio.Event()
        self._room.set()

    def put(self, row) -> None:
        self._rows.put_nowait(row)
        if self._rows.qsize() >= self._limit:
            self._room.clear()

    async def get(self):
        row = await self._rows.get()
        if self._rows.qsize() < self._limit:
            self._room.set()
        return row

    async def room(self) -> None:
        """Return once the queue has room (at once, mostly)."""
        await self._room.wait()


class CorpusService:
    """A corpus step's own thread: `prepare` on its pool first, then each batch in turn (Lucene is called
    from this one thread)."""

    def __init__(self, op: CorpusOperator, pool_rows: Iterable[dict]):
        self.op = op
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"rare-{op.name}")
        self.prepared: Future | None = self._thread.submit(op.prepare, pool_rows)

    def submit(self, rows: list[dict]) -> Future:
        """The outcomes of `rows` (`process_batch`), once the pool is prepared."""
        return self._thread.submit(self._answer, rows)

    def _answer(self, rows: list[dict]) -> list:
        self.prepared.result()  # prepare's error, if it failed
        return self.op.process_batch(rows)

    def close(self) -> None:
        self._thread.submit(_detach_from_java).result()
        self._thread.shutdown()


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
    backlog: Backlog | None = None  # rows the step before wrote in this run (None: the first step)
    earlier: list[tuple[Path, int]] = field(default_factory=list)  # the step before's journals as they were
    offered: int = 0  # rows the step before handed on (this run) or had already (earlier runs)
    share: Callable[[Iterable], Iterator] | None = None  # this process's part of the step's own input (None: all)
    batches: CorpusService | None = None  # a corpus step: where its batches are answered (anything with `submit`)
    on_end: Callable[["StreamStep", "StreamStep | None"], None] | None = None  # the step ended in this process
    elsewhere: list[dict] = field(default_factory=list)  # what other processes did in the step (their counts...)
    remote: object | None = None  # a row step's stand-in whose `process` runs elsewhere (Ray actors); None: `op`

    def summary(self, slot: int, nxt: "StreamStep | None" = None) -> dict:
        """What this process (`slot`) did in the step: what `elsewhere` holds of the other processes."""
        return {
            "slot": slot,
            "counts": asdict(self.run.counts),
            "first_at": self.run.first_at,
            "last_at": self.run.last_at,
            "usage": self.op.usage(),
            "offered": nxt.offered if nxt is not None else 0,
        }

    def outcome(self) -> tuple[StepCounts, float, dict]:
        """The step's counts, wall time (its first row to its last) and usage, over every process."""
        runs = [self.summary(0), *self.elsewhere]
        counts = StepCounts(**{key: sum(r["counts"][key] for r in runs) for key in asdict(self.run.counts)})
        firsts = [r["first_at"] for r in runs if r["first_at"]]
        lasts = [r["last_at"] for r in runs if r["last_at"]]
        wall = max(lasts) - min(firsts) if firsts and lasts else 0.0
        usage = merge_usage([(self.remote or self.op).usage(), *(r["usage"] for r in self.elsewhere)])
        if self.elsewhere and isinstance(self.op, RowOperator):  # which process wrote how many rows
            by_process = {
                **parent_rows(self.run.counts.done),
                **{str(r["slot"]): r["counts"]["done"] for r in self.elsewhere},
            }
            usage["rows_by_process"] = by_process
        return counts, wall, usage


def parent_rows(done: int) -> dict:
    """The parent's (slot 0) entry of a step's `rows_by_process`: none when it wrote no rows (it may only
    coordinate the workers)."""
    return {"0": done} if done else {}


def snapshot_earlier(steps: list[StreamStep], storage: StepStorage) -> None:
    """Reopen the steps' journals (more rows will join them) and note what each step before had written
    in earlier runs: those rows are fed to the step first."""
    for step in steps:
        storage.reopen(step.index)
    for before, step in zip(steps, steps[1:]):
        step.earlier = [(j.path, complete_length(j.path)) for j in storage.journals(before.index) if j.path.exists()]
        step.offered = sum(_count_lines(path, length) for path, length in step.earlier)


@contextmanager
def step_runs(steps: list[StreamStep], storage: StepStorage, failures: Journal, shard: int | None = None):
    """Each step's journal (this process's `shard` of it), `StepRun` and progress, open for the stream."""
    with ExitStack() as stack:
        for step in steps:
            journal = stack.enter_context(storage.journal(step.index, shard))
            step.run = StepRun(step.op, journal, failures, step.progress, step.breaker)
            stack.callback(step.run.dropped.close)
            stack.enter_context(step.progress)
        yield


@contextmanager
def corpus_services(steps: list[StreamStep], storage: StepStorage):
    """A `CorpusService` for each corpus step, preparing on its pool from now on; closed at the end."""
    with ExitStack() as stack:
        for step in steps:
            if isinstance(step.op, CorpusOperator):
                step.batches = CorpusService(step.op, storage.read(step.pool))
                stack.callback(step.batches.close)
        yield


def run_stream(steps: list[StreamStep], storage: StepStorage, failures: Journal, board: ProgressBoard) -> None:
    """Run `steps` (consecutive, in run order) as one stream in this process; every finished row ends in
    its step's journal. The caller finalizes the step files, in order, when it returns."""
    snapshot_earlier(steps, storage)
    with board, step_runs(steps, storage, failures), corpus_services(steps, storage):
        asyncio.run(stream_rows(steps, storage))


async def stream_rows(steps: list[StreamStep], storage: StepStorage) -> None:
    """Every step of the stream at once, until the last has ended (or one fails: then all stop)."""
    for step in steps[1:]:
        step.backlog = Backlog()
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
        step.backlog.put(row)

    return offer


async def _step(step: StreamStep, nxt: StreamStep | None, storage: StepStorage) -> None:
    """Run one step over its input until the step before has ended; then tell the next one."""
    rows = _input(step, nxt, storage)
    if isinstance(step.op, RowOperator):
        try:
            await run_rows(step.remote or step.op, rows, step.run)
        finally:
            flush_clients(step.op)
    else:
        await _batches(step, rows)
    if step.on_end is not None:
        step.on_end(step, nxt)
    elif nxt is not None:
        nxt.progress.set_total(nxt.offered)
    if nxt is not None:
        nxt.backlog.put(_END)


async def _input(step: StreamStep, nxt: StreamStep | None, storage: StepStorage) -> AsyncIterator[dict]:
    """The step's rows to work on: its input file (the first step), or the rows the step before had
    written in earlier runs, then those it writes now; each only once the next step has room."""
    if step.backlog is None:
        rows = storage.read(step.index - 1)
        async for row in async_rows(step.run.pending(step.share(rows) if step.share else rows, step.skip)):
            await _room(nxt)
            yield row
        return
    seen: set[str] = set()
    lines = (line for path, length in step.earlier for line in complete_lines(path, length))
    for line in step.share(lines) if step.share else lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row["id"] not in seen and step.run.take(row, step.skip):
            seen.add(row["id"])
            await _room(nxt)
            yield row
    while (row := await step.backlog.get()) is not _END:
        if step.run.take(row, step.skip):
            await _room(nxt)
            yield row


async def _room(nxt: StreamStep | None) -> None:
    if nxt is not None:
        await nxt.backlog.room()


async def _batches(step: StreamStep, rows: AsyncIterator[dict]) -> None:
    """A corpus step: micro-batches of whatever rows are ready, up to its batch_size, each answered by its
    `batches` (here: its own thread, once `prepare` on its pool, begun with the stream, is done)."""
    op: CorpusOperator = step.op
    ready: asyncio.Queue = asyncio.Queue(maxsize=op.batch_size)  # one batch waits while one is searched

    async def pump() -> None:
        try:
            async for row in rows:
                await ready.put(row)
        except asyncio.CancelledError:
            raise
        except BaseException:
            await ready.put(_END)  # the batches end, then the pump's error is raised
            raise
        await ready.put(_END)

    loop = asyncio.get_running_loop()
    pumper = asyncio.create_task(pump())
    try:
        if step.batches.prepared is not None:
            await asyncio.wrap_future(step.batches.prepared)
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
            results = await asyncio.wrap_future(step.batches.submit(batch))
            step.progress.in_flight = 0
            step.run.record_batch(batch, results)
        if pumper.done() and pumper.exception() is not None:
            raise pumper.exception()
    finally:
        pumper.cancel()
        await asyncio.gather(pumper, return_exceptions=True)


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
