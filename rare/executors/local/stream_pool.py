"""The stream over this process and worker processes: each carries a share of the rows through every step.

One process's litellm client CPU caps what a stream sends (`benchmarks/bare_litellm.py`), so a big
stream is spread like a big step (`rare.executors.local.workers`): every process takes chunks of
the first step's input, and of the rows each step before had written in earlier runs, as it asks,
and carries its rows through all the streamed steps to its own journal shards. A corpus step is
answered where its index lives, in this process: a worker sends it each micro-batch and awaits the
outcomes. Each process paces at its share of a step's rpm / tpm; the budget is one run-wide counter.
"""

import asyncio
import itertools
import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from rare.errors import RunAborted
from rare.executors.local.workers import (
    WORKER_CONTEXT,
    ChunkClaims,
    QueueProgress,
    WorkerReports,
    parent_waits,
    take_progress,
    use_environment,
    worker_environment,
    worker_slots,
)
from rare.llm.usage import merge_usage
from rare.pipeline.circuit_breaker import CircuitBreaker
from rare.pipeline.progress import ProgressBoard
from rare.pipeline.step_contract import CorpusOperator, Operator
from rare.pipeline.stream import (
    StreamStep,
    corpus_services,
    snapshot_earlier,
    step_runs,
    stream_rows,
)
from rare.storage.journal import Journal
from rare.storage.step_storage import StepStorage

log = logging.getLogger(__name__)


class CorpusStandIn(CorpusOperator):
    """A corpus step as a worker sees it: its name, columns and batch size; the parent answers its batches."""

    def __init__(self, op: CorpusOperator):  # the real step's index and JVM stay in the parent
        self.inputs, self.outputs, self.context = op.inputs, op.outputs, op.context
        self.batch_size, self.pool = op.batch_size, op.pool


def can_stand_in(op: Operator) -> bool:
    """Whether a worker can write a corpus step's rows without the step (it writes one row per row, its
    fields renamed as every step renames them)."""
    return type(op).row_ids is Operator.row_ids and type(op).to_columns is Operator.to_columns


@dataclass
class StepShare:
    """What a worker needs of one streamed step (a corpus step's `op` is its `CorpusStandIn`)."""

    op: Operator
    index: int
    pool: int
    skip: set[str]
    breaker: CircuitBreaker
    earlier: list[tuple[Path, int]]
    claims: ChunkClaims


class _Answers:
    """A worker's corpus-step batches, answered by the parent: each sent with a number, matched back."""

    def __init__(self, requests, replies, slot: int):
        self._requests, self._slot = requests, slot
        self._waiting: dict[int, Future] = {}
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, args=(replies,), daemon=True, name="rare-batch-answers").start()

    def submit(self, index: int, rows: list[dict]) -> Future:
        future, number = Future(), next(self._numbers)
        with self._lock:
            self._waiting[number] = future
        self._requests.put(("batch", self._slot, (index, number, rows)))
        return future

    def _read(self, replies) -> None:
        while True:
            number, results, error = replies.get()
            with self._lock:
                future = self._waiting.pop(number)
            if error is None:
                future.set_result(results)
            else:
                future.set_exception(RuntimeError(error))


class _ParentBatches:
    """`StreamStep.batches` in a worker: the step's batches go to the parent (already prepared there)."""

    prepared = None

    def __init__(self, answers: _Answers, index: int):
        self.submit = partial(answers.submit, index)


def _tell_end(requests, slot: int, step: StreamStep, nxt: StreamStep | None) -> None:
    step.progress.flush()
    requests.put(("step_end", (slot, step.index), step.summary(slot, nxt)))


def _stream_work(
    shares: list[StepShare], storage: StepStorage, failures_path, slot: int, requests, replies, environ: dict
) -> None:
    """A worker: the whole stream over the chunks it claims, each step's rows in its own journal shard."""
    use_environment(environ)
    try:
        answers = _Answers(requests, replies, slot)
        steps = []
        for share in shares:
            progress = QueueProgress(requests, (slot, share.index), share.op.usage)
            step = StreamStep(share.op, share.index, share.pool, share.skip, share.breaker, progress)
            step.earlier, step.share = share.earlier, partial(share.claims.rows, slot=slot)
            if isinstance(share.op, CorpusOperator):
                step.batches = _ParentBatches(answers, share.index)
            step.on_end = partial(_tell_end, requests, slot)
            steps.append(step)
        with Journal(failures_path) as failures, step_runs(steps, storage, failures, shard=slot):
            asyncio.run(stream_rows(steps, storage))
        requests.put(("end", slot, None))
    except RunAborted as error:
        requests.put(("fatal", slot, str(error)))
    except BaseException as error:  # report, so the parent never waits on a dead worker
        requests.put(("crash", slot, f"{type(error).__name__}: {error}"))


class _Tally:
    """The other processes' part of each step, as their reports come: progress, usage, step ends."""

    def __init__(self, steps: list[StreamStep], reports_processes: dict):
        self.steps = {step.index: step for step in steps}
        self.next = {step.index: nxt for step, nxt in zip(steps, [*steps[1:], None])}
        self.usage: dict[tuple[int, int], dict] = {}  # (slot, step) -> that process's usage so far
        self.ends: dict[int, list[dict]] = {step.index: [] for step in steps}
        self.processes = reports_processes  # the workers still counted on (starting ones dropped when idle)
        self._lock = threading.Lock()
        for step in steps:
            step.progress.usage = partial(self.step_usage, step)

    def step_usage(self, step: StreamStep) -> dict:
        return merge_usage([step.op.usage(), *(u for (_, index), u in list(self.usage.items()) if index == step.index)])

    def progress(self, key: tuple[int, int], payload) -> None:
        slot, index = key
        self.usage[key] = take_progress(self.steps[index].progress, slot, payload)

    def ended(self, index: int, summary: dict) -> None:
        """A process ended step `index`; once every one has, the next step knows its total."""
        with self._lock:
            self.ends[index].append(summary)
            everyone = len(self.ends[index]) >= 1 + len(self.processes)
        nxt = self.next[index]
        if everyone and nxt is not None:
            nxt.progress.set_total(sum(s["offered"] for s in self.ends[index]))

    def parent_ended(self, step: StreamStep, nxt: StreamStep | None) -> None:
        self.ended(step.index, step.summary(0, nxt))

    def elsewhere(self, index: int) -> list[dict]:
        """The other processes' summaries of step `index`."""
        return [summary for summary in self.ends[index] if summary["slot"] != 0]


def run_stream_pool(
    steps: list[StreamStep], storage: StepStorage, failures: Journal, board: ProgressBoard, workers: int
) -> None:
    """`rare.pipeline.stream.run_stream` over `worker_slots(workers)` worker processes and this one, which
    takes what they leave (or a share beside them, see `rare.executors.local.workers.parent_waits`).

    Each step's `elsewhere` gets the other processes' counts, times and usage, for its report."""
    snapshot_earlier(steps, storage)
    slots = worker_slots(workers)
    claims = {step.index: ChunkClaims(WORKER_CONTEXT, 1 + len(slots)) for step in steps}
    for step in steps:
        step.share = partial(claims[step.index].rows, slot=0)
        for client in step.op.clients():
            client.rate_share = 1 / workers  # each process paces at its share of rpm / tpm
    shares = [
        StepShare(
            step.op if not isinstance(step.op, CorpusOperator) else CorpusStandIn(step.op),
            step.index,
            step.pool,
            step.skip,
            step.breaker,
            step.earlier,
            claims[step.index],
        )
        for step in steps
    ]
    requests = WORKER_CONTEXT.Queue()
    replies = {slot: WORKER_CONTEXT.Queue() for slot in slots}
    processes = {
        slot: WORKER_CONTEXT.Process(
            target=_stream_work,
            args=(shares, storage, failures.path, slot, requests, replies[slot], worker_environment()),
            daemon=True,
        )
        for slot in slots
    }
    counted = dict(processes)
    tally = _Tally(steps, counted)
    for step in steps:
        step.on_end = tally.parent_ended

    def stop() -> None:
        for claim in claims.values():
            claim.stop()

    with board, step_runs(steps, storage, failures), corpus_services(steps, storage):

        def report(kind: str, key, payload) -> None:
            if kind == "progress":
                tally.progress(key, payload)
            elif kind == "step_end":
                tally.ended(key[1], payload)
            elif kind == "batch":
                index, number, rows = payload
                answer = partial(_answer, replies[key], number)
                tally.steps[index].batches.submit(rows).add_done_callback(answer)

        with WorkerReports("the stream", requests, counted, stop, report) as reports:
            if parent_waits():
                reports.wait(())
            asyncio.run(_parent_stream(steps, storage, reports))
            # a worker still starting when this process has read every input holds no rows: not waited for
            reports.wait(set.intersection(*(set(c.idle_after_stop(c.rows_read)) for c in claims.values())))
    for step in steps:
        step.elsewhere = tally.elsewhere(step.index)


def _answer(replies, number: int, future: Future) -> None:
    """Send a corpus step's outcomes back to the worker that asked (from the step's thread)."""
    error = future.exception()
    replies.put((number, None if error else future.result(), None if error is None else repr(error)))


async def _parent_stream(steps: list[StreamStep], storage: StepStorage, reports: WorkerReports) -> None:
    """This process's stream; a worker's failure stops it at once (every finished row is kept)."""
    loop = asyncio.get_running_loop()
    failed: asyncio.Future = loop.create_future()

    def on_fail(error: BaseException) -> None:
        try:
            loop.call_soon_threadsafe(lambda: failed.done() or failed.set_exception(error))
        except RuntimeError:  # the loop has ended: the error is raised after the workers are joined
            pass

    reports.on_fail = on_fail
    mine = asyncio.create_task(stream_rows(steps, storage))
    await asyncio.wait([mine, failed], return_when=asyncio.FIRST_COMPLETED)
    if failed.done():
        mine.cancel()
        await asyncio.gather(mine, return_exceptions=True)
        failed.result()
    failed.cancel()
    mine.result()
