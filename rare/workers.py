"""Row steps spread over worker processes, so one core is never the bottleneck.

litellm costs ~3.5 ms of client CPU per call, so one process tops out near 280 calls/s.
The parent works too, from the first second: it does not wait for the spawned workers to
import litellm. Rows are handed out in small chunks of the step's input, in file order,
to whichever process asks first (a shared counter), so a late or slow worker simply takes
fewer chunks. Each spawned worker appends to its own journal shard and reports progress
and usage to the parent.
"""

import multiprocessing
import queue as queue_module
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from rare.errors import RunAborted
from rare.execute import StepRun, run_row_step
from rare.operator import RowOperator
from rare.resume import failed_ids
from rare.storage.journal import Journal
from rare.storage.step_storage import StepStorage

REPORT_EVERY_S = 0.25
CHUNK_ROWS = 32  # rows handed out at a time: small enough to balance, large enough to be rare
NO_MORE_WORK = 2**62  # a claim counter set this high hands out nothing more


class ChunkClaims:
    """Chunks of a step's input (numbered in input order) handed out to processes that ask.

    Shared by the parent and the spawned workers: a counter of the next free chunk, and the
    first chunk each process took (guarded by the counter's lock).
    """

    def __init__(self, context, processes: int):
        self.next = context.Value("q", 0)
        self.first = context.Array("q", [-1] * processes, lock=False)
        self.rows_read = 0  # in this process: how far its reading got

    def claim(self, slot: int) -> int:
        with self.next.get_lock():
            chunk = self.next.value
            self.next.value = chunk + 1
            if self.first[slot] < 0:
                self.first[slot] = chunk
        return chunk

    def rows(self, rows: Iterable[dict], slot: int) -> Iterator[dict]:
        """The rows of the chunks this process claims, read in order.

        A process claims its next chunk only when it has read past the current one, and the
        counter only grows, so the claimed chunk is never behind the reading position: no
        chunk is skipped, and no chunk is taken twice.
        """
        current = self.claim(slot)
        for position, row in enumerate(rows):
            self.rows_read = position + 1
            chunk = position // CHUNK_ROWS
            if chunk > current:
                current = self.claim(slot)
            if chunk == current:
                yield row

    def stop(self) -> None:
        """Hand out nothing more, to anyone."""
        with self.next.get_lock():
            self.next.value = NO_MORE_WORK

    def idle_after_stop(self, total_rows: int) -> list[int]:
        """Stop handing out chunks; the slots that never took a chunk with rows in it."""
        chunks = -(-total_rows // CHUNK_ROWS)
        with self.next.get_lock():
            self.next.value = NO_MORE_WORK
            return [slot for slot in range(len(self.first)) if not 0 <= self.first[slot] < chunks]


def merge_usage(usages: list[dict]) -> dict:
    """Sum usage dicts of several workers (numbers add up, error counts merge)."""
    total: dict = {}
    for usage in usages:
        for key, value in usage.items():
            if isinstance(value, dict):
                merged = total.setdefault(key, {})
                for name, count in value.items():
                    merged[name] = merged.get(name, 0) + count
            elif isinstance(value, (int, float)):
                total[key] = total.get(key, 0) + value
    return total


class _QueueProgress:
    """What a worker tells the parent: rows done and failed since the last report, and its usage."""

    def __init__(self, queue, shard: int, usage: Callable[[], dict]):
        self.queue, self.shard, self.usage = queue, shard, usage
        self.done = self.failed = 0
        self.sent_at = 0.0

    def advance(self, done: int = 1, failed: int = 0) -> None:
        self.done += done
        self.failed += failed
        if time.monotonic() - self.sent_at >= REPORT_EVERY_S:
            self.flush()

    def flush(self) -> None:
        self.queue.put(("progress", self.shard, (self.done, self.failed, self.usage())))
        self.done = self.failed = 0
        self.sent_at = time.monotonic()


def _work(op: RowOperator, storage: StepStorage, index: int, slot: int, claims: ChunkClaims, failures_path, breaker, queue) -> None:
    try:
        skip = storage.done_ids(index) | failed_ids(failures_path).get(op.name, set())
        rows = claims.rows(storage.read(index - 1), slot)
        progress = _QueueProgress(queue, slot, op.usage)
        with storage.journal(index, slot) as journal, Journal(failures_path) as failures:
            run = StepRun(op, journal, failures, progress, breaker)
            run_row_step(op, rows, run, skip)
            rows_done = run.counts.done
        progress.flush()
        queue.put(("end", slot, {**op.usage(), "rows_by_process": {str(slot): rows_done}}))
    except RunAborted as error:
        queue.put(("fatal", slot, str(error)))
    except BaseException as error:  # report, so the parent never waits on a dead worker
        queue.put(("crash", slot, f"{type(error).__name__}: {error}"))


class _WorkerReports(threading.Thread):
    """Reads the spawned workers' reports in the parent while the parent works on its own rows."""

    def __init__(self, op_name: str, queue, processes: dict, claims: ChunkClaims, progress):
        super().__init__(daemon=True, name=f"rare-{op_name}-reports")
        self.op_name, self.queue, self.processes, self.claims, self.progress = op_name, queue, processes, claims, progress
        self.latest: dict[int, dict] = {}  # each worker's usage so far
        self.error: BaseException | None = None
        self._closing = threading.Event()

    def run(self) -> None:
        ended = self.ended = set()
        while not set(self.processes) <= ended and not self._closing.is_set():
            try:
                kind, slot, payload = self.queue.get(timeout=0.5)
            except queue_module.Empty:
                dead = [s for s, p in list(self.processes.items()) if s not in ended and not p.is_alive()]
                if dead:
                    self._fail(RuntimeError(f"worker {dead[0]} of step '{self.op_name}' died (exit code {self.processes[dead[0]].exitcode})"))
                    return
                continue
            if kind == "progress":
                done, failed, self.latest[slot] = payload
                self.progress.advance(done=done, failed=failed)
            elif kind == "end":
                self.latest[slot] = payload
                ended.add(slot)
            else:
                self._fail(RunAborted(payload) if kind == "fatal" else RuntimeError(f"worker {slot} of step '{self.op_name}' failed: {payload}"))
                return

    def _fail(self, error: BaseException) -> None:
        self.error = error
        self.claims.stop()  # everyone, the parent too, stops taking chunks

    def close(self) -> None:
        self._closing.set()


def run_row_step_sharded(run: StepRun, storage: StepStorage, index: int, workers: int, skip: set[str]) -> dict:
    """Run a row step in this process and `workers - 1` spawned ones; returns the step's merged usage."""
    op, progress = run.op, run.progress
    context = multiprocessing.get_context("spawn")  # never fork a process that may hold a JVM
    queue, claims = context.Queue(), ChunkClaims(context, workers)
    processes = {
        slot: context.Process(target=_work, args=(op, storage, index, slot, claims, run.failures.path, run.breaker, queue), daemon=True)
        for slot in range(1, workers)
    }
    reports = _WorkerReports(op.name, queue, dict(processes), claims, progress)
    progress.usage = lambda: merge_usage([op.usage(), *list(reports.latest.values())])
    for process in processes.values():
        process.start()
    reports.start()
    try:
        run_row_step(op, claims.rows(storage.read(index - 1), 0), run, skip)
        # a worker still starting up when the parent has read everything holds no rows: no
        # need to wait for it (it is stopped below, once its reports no longer matter)
        for slot in claims.idle_after_stop(claims.rows_read):
            reports.processes.pop(slot)
        reports.join()
        if reports.error is not None:
            raise reports.error
    finally:
        reports.close()
        for process in processes.values():
            if process.is_alive():
                process.terminate()
            process.join(timeout=10)
    return merge_usage([{**op.usage(), "rows_by_process": {"0": run.counts.done}}, *reports.latest.values()])
