"""Row steps sharded over worker processes, so one core is never the bottleneck.

litellm costs ~3.5 ms of client CPU per call, so one process tops out near 280 calls/s.
Each worker (spawned, with its own event loop) takes the rows whose id hashes to its shard,
appends them to its own journal shard, and reports progress and usage to the parent.
"""

import multiprocessing
import queue as queue_module
import time
import zlib
from collections.abc import Callable

from rare.errors import RunAborted
from rare.execute import StepRun, run_row_step
from rare.operator import RowOperator
from rare.resume import failed_ids
from rare.storage.journal import Journal
from rare.storage.step_storage import StepStorage

REPORT_EVERY_S = 0.25


def shard_of(row_id: str, shards: int) -> int:
    return zlib.crc32(row_id.encode("utf-8")) % shards


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


def _work(op: RowOperator, storage: StepStorage, index: int, shard: int, shards: int, failures_path, breaker, queue) -> None:
    try:
        skip = storage.done_ids(index) | failed_ids(failures_path).get(op.name, set())
        rows = (row for row in storage.read(index - 1) if shard_of(row["id"], shards) == shard)
        progress = _QueueProgress(queue, shard, op.usage)
        with storage.journal(index, shard) as journal, Journal(failures_path) as failures:
            run_row_step(op, rows, StepRun(op, journal, failures, progress, breaker), skip)
        progress.flush()
        queue.put(("end", shard, op.usage()))
    except RunAborted as error:
        queue.put(("fatal", shard, str(error)))
    except BaseException as error:  # report, so the parent never waits on a dead worker
        queue.put(("crash", shard, f"{type(error).__name__}: {error}"))


def run_row_step_sharded(run: StepRun, storage: StepStorage, index: int, workers: int) -> dict:
    """Run a row step over `workers` processes; returns the step's merged usage."""
    op, progress = run.op, run.progress
    context = multiprocessing.get_context("spawn")  # never fork a process that may hold a JVM
    queue = context.Queue()
    processes = [
        context.Process(target=_work, args=(op, storage, index, shard, workers, run.failures.path, run.breaker, queue), daemon=True)
        for shard in range(workers)
    ]
    latest: dict[int, dict] = {}
    progress.usage = lambda: merge_usage(list(latest.values()))
    for process in processes:
        process.start()
    ended: set[int] = set()
    try:
        while len(ended) < workers:
            try:
                kind, shard, payload = queue.get(timeout=1.0)
            except queue_module.Empty:
                dead = [s for s, p in enumerate(processes) if s not in ended and not p.is_alive()]
                if dead:
                    raise RuntimeError(f"worker {dead[0]} of step '{op.name}' died (exit code {processes[dead[0]].exitcode})")
                continue
            if kind == "progress":
                done, failed, latest[shard] = payload
                progress.advance(done=done, failed=failed)
            elif kind == "end":
                latest[shard] = payload
                ended.add(shard)
            elif kind == "fatal":
                raise RunAborted(payload)
            else:
                raise RuntimeError(f"worker {shard} of step '{op.name}' failed: {payload}")
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join(timeout=10)
    return merge_usage(list(latest.values()))
