"""Row steps spread over worker processes, so one core is never the bottleneck.

litellm's client CPU per call caps what one process sends (`benchmarks/bare_litellm.py` measures it).
Rows are handed out in small chunks of the step's input, in file order, to whichever process
asks first (a shared counter), so a late or slow worker simply takes fewer chunks. Each
worker appends to its own journal shard and reports progress and usage to the parent.

Workers fork from multiprocessing's forkserver: a clean, single-threaded process that
imports litellm once per run (``prestart_workers``, at the start of the run, on the core
the start-up leaves idle), never from the run's own process, which may hold a JVM and
threads. Forked from it, a worker starts in milliseconds with litellm imported, so the parent
only coordinates (`parent_waits`): it lets `workers` workers take every chunk, and takes
only what none took (all of it when no worker could start). To take a share itself, the parent
would import litellm too: seconds of CPU on a core the step needs. Without a preloaded
forkserver (Windows: spawned workers import everything themselves), the parent works from the
first second beside `workers - 1` workers instead.
"""

import logging
import multiprocessing
import os
import queue as queue_module
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from rare.errors import RunAborted
from rare.llm.usage import merge_usage
from rare.pipeline.step_contract import RowOperator
from rare.pipeline.step_run import StepRun, run_row_step
from rare.pipeline.stream import parent_rows
from rare.storage.journal import Journal
from rare.storage.step_storage import StepStorage

log = logging.getLogger(__name__)

REPORT_EVERY_S = 0.25
CHUNK_ROWS = 32  # rows handed out at a time: small enough to balance, large enough to be rare
NO_MORE_WORK = 2**62  # a claim counter set this high hands out nothing more
MIN_ROWS_PER_WORKER = 200  # below this a worker's start costs more than it saves
_preloaded = False  # the forkserver imports _PRELOAD (`prestart_workers`): workers start warm
ONE_PROCESS_RPM = 9000  # a rate-limited step up to this rpm runs in one process (well under its ceiling)
ROWS_TO_SHARD = 2 * MIN_ROWS_PER_WORKER  # the fewest pending rows a step is sharded for (see executors.local)
WORKER_CONTEXT = multiprocessing.get_context(
    "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
)
# what every worker needs: the CLI script (each worker imports it otherwise), litellm, the step runner
_PRELOAD = [
    "litellm",
    "__main__",
    "rare.executors.local.workers",
    "rare.executors.local.stream_pool",
    "rare.llm.client",
]


class ChunkClaims:
    """Chunks of a step's input (numbered in input order) handed out to processes that ask.

    Shared by the parent and the worker processes: a counter of the next free chunk, and the
    first chunk each process took (guarded by the counter's lock).
    """

    def __init__(self, context, processes: int):
        self.next = context.Value("q", 0)
        self.first = context.Array("q", [-1] * processes, lock=False)
        self.chunks = context.Value("q", -1, lock=False)  # the input's chunks, once a process has read it all
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
        if 0 <= self.chunks.value <= current:  # another process read the whole input: nothing is left
            return
        for position, row in enumerate(rows):
            self.rows_read = position + 1
            chunk = position // CHUNK_ROWS
            if chunk > current:
                current = self.claim(slot)
            if chunk == current:
                yield row
        self.chunks.value = -(-self.rows_read // CHUNK_ROWS)

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


def parent_waits() -> bool:
    """Whether the parent lets the workers take every chunk first: they fork from a preloaded forkserver."""
    return _preloaded


def worker_slots(workers: int) -> range:
    """The slots of a pool's worker processes (the parent is slot 0): `workers` of them when the parent
    only coordinates, else `workers - 1` beside it."""
    return range(1, workers + 1) if parent_waits() else range(1, workers)


PARENT_CHECK_S = 0.5  # how often a worker looks whether the run's process is still alive
_PARENT_PID = "RARE_RUN_PID"  # the run's process, in a worker's environment


def use_environment(environ: dict) -> None:
    """The run's environment now (API keys), not the forkserver's from its start; and the worker ends
    when the run's process does, even by `kill -9` (it is the forkserver's child, not the run's)."""
    os.environ.clear()
    os.environ.update(environ)
    parent = int(environ[_PARENT_PID])
    threading.Thread(target=_exit_without, args=(parent,), daemon=True, name="rare-parent-watch").start()


def worker_environment() -> dict:
    """What `use_environment` takes in a worker: this process's environment and its pid."""
    return {**os.environ, _PARENT_PID: str(os.getpid())}


def _exit_without(parent: int) -> None:
    while True:
        time.sleep(PARENT_CHECK_S)
        try:
            os.kill(parent, 0)
        except ProcessLookupError:  # rows in flight are lost, as in the run's own process; none finished
            os._exit(1)
        except PermissionError:  # alive, owned by someone else (cannot be the run: skip)
            pass


class QueueProgress:
    """What a worker tells the parent: rows done, failed and found already done since the last report, and
    its usage and rows in flight, as `("progress", key, (done, failed, resumed, usage, in_flight))` (`key`:
    its slot, or (slot, step)).

    It stands in for the step's `StepProgress` in the worker (`in_flight`, `set_total`, a context).
    """

    def __init__(self, queue, key, usage: Callable[[], dict]):
        self.queue, self.key, self.usage = queue, key, usage
        self.done = self.failed = self.resumed = 0
        self.in_flight = 0
        self.sent_at = 0.0

    def advance(self, done: int = 0, failed: int = 0, resumed: bool = False) -> None:
        if resumed:
            self.resumed += done + failed
        else:
            self.done += done
            self.failed += failed
        if time.monotonic() - self.sent_at >= REPORT_EVERY_S:
            self.flush()

    def flush(self) -> None:
        self.queue.put(("progress", self.key, (self.done, self.failed, self.resumed, self.usage(), self.in_flight)))
        self.done = self.failed = self.resumed = 0
        self.sent_at = time.monotonic()

    def set_total(self, total: int | None) -> None:
        """The parent knows the totals."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.flush()


def take_progress(progress, slot: int, payload: tuple) -> dict:
    """A worker's progress report (`QueueProgress.flush`) added to the step's progress in the parent;
    returns the worker's usage so far."""
    done, failed, resumed, usage, progress.in_flight_elsewhere[slot] = payload
    progress.advance(done=done, failed=failed)
    if resumed:
        progress.advance(done=resumed, resumed=True)
    return usage


def _work(
    op: RowOperator,
    storage: StepStorage,
    index: int,
    slot: int,
    claims: ChunkClaims,
    skip: set[str],
    failures_path,
    breaker,
    queue,
    environ: dict,
) -> None:
    use_environment(environ)
    try:
        rows = claims.rows(storage.read(index - 1), slot)
        progress = QueueProgress(queue, slot, op.usage)
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


class WorkerReports(threading.Thread):
    """Starts the workers and reads their reports in the parent (while it waits, or works on its own rows).

    Args:
        what: the work, as errors name it (`step 'doc2query'`, `the stream`).
        queue: where the workers report: `(kind, key, payload)`, key = the slot or (slot, ...).
        processes: slot -> worker process, not started yet.
        stop: called when a worker fails: no process, the parent included, takes more work.
        report: called with every report but a failure, an `end` included (then the worker is done).
        on_fail: called with the error when a worker fails (from this thread).
    """

    def __init__(self, what: str, queue, processes: dict, stop: Callable[[], None], report, on_fail=None):
        super().__init__(daemon=True, name="rare-worker-reports")
        self.what, self.queue, self.processes = what, queue, processes
        self.stop, self.report, self.on_fail = stop, report, on_fail
        self.error: BaseException | None = None
        self.ended: set[int] = set()
        self._all = dict(processes)
        self._closing = threading.Event()
        self._starting = threading.Lock()

    def __enter__(self) -> "WorkerReports":
        self.start()  # it starts the workers: the parent never waits for a forkserver still importing
        return self

    def wait(self, idle: Iterable[int]) -> None:
        """Once the parent has read all its input: wait for the workers, but those in `idle` (still
        starting: they hold no rows); a worker's failure is raised here."""
        for slot in idle:
            self.processes.pop(slot, None)
        self.join()
        if self.error is not None:
            raise self.error

    def __exit__(self, *exc) -> None:
        self.close()  # after this no worker starts
        stop_processes(self._all.values())

    def run(self) -> None:
        for slot in list(self.processes):
            with self._starting:
                if self._closing.is_set():
                    return
                process = self.processes.get(slot)
                if process is None:  # the parent finished first: not needed any more
                    continue
                try:
                    process.start()
                except Exception as error:  # the parent and the other workers take its rows
                    log.warning("worker %d of %s could not start (%s); continuing without it", slot, self.what, error)
                    self.processes.pop(slot, None)
        while not set(self.processes) <= self.ended and not self._closing.is_set():
            try:
                kind, key, payload = self.queue.get(timeout=0.5)
            except queue_module.Empty:
                dead = [s for s, p in list(self.processes.items()) if s not in self.ended and not p.is_alive()]
                if dead:
                    exit_code = self.processes[dead[0]].exitcode
                    return self._fail(RuntimeError(f"worker {dead[0]} of {self.what} died (exit code {exit_code})"))
                continue
            if kind in ("fatal", "crash"):
                return self._fail(
                    RunAborted(payload)
                    if kind == "fatal"
                    else RuntimeError(f"worker {key} of {self.what} failed: {payload}")
                )
            self.report(kind, key, payload)
            if kind == "end":
                self.ended.add(key)

    def _fail(self, error: BaseException) -> None:
        self.error = error
        self.stop()
        if self.on_fail is not None:
            self.on_fail(error)

    def close(self) -> None:
        with self._starting:
            self._closing.set()


def stop_processes(processes: Iterable) -> None:
    """End every worker process still running, and wait for it."""
    for process in processes:
        if process.is_alive():
            process.terminate()
        if process.pid is not None:
            process.join(timeout=10)


def step_workers(configured: int | None, llm_workers: int | None, rpm, tpm, embedded: bool) -> int:
    """Processes a big LLM row step is sharded over.

    `configured` (`executor.workers`) when set, else the step's own (deprecated) `llm.workers`;
    0 means one per core. Neither set: one process for an embedded model server (it is the
    bottleneck, not the client) or under an `rpm` up to 9,000 or a `tpm` alone (one limiter paces
    best; workers' static shares of a limit idle while one starts), else one per core.
    """
    chosen = configured if configured is not None else llm_workers
    if chosen is None and (embedded or ((rpm or tpm) and float(rpm or 0) <= ONE_PROCESS_RPM)):
        return 1
    return int(chosen) if chosen else (os.cpu_count() or 1)


def prestart_workers(cfg) -> bool:
    """Start the forkserver (and its imports) in the background if this run may shard a step.

    Called before the run's own start-up, so both run side by side. A run on another executor,
    or with too few rows to shard (data.limit, or a short .jsonl/.csv input), starts nothing.
    Returns whether it started.
    """
    try:
        executor = cfg.get("executor") or {}
        if not str(executor.get("_target_", "rare.executors.local.executor.")).startswith(
            "rare.executors.local.executor."
        ):
            return False
        limit = cfg.data.get("limit")
        if limit is not None and int(limit) < ROWS_TO_SHARD:
            return False
        if _short_text_file(str(cfg.data.input), ROWS_TO_SHARD):
            return False
        llms = [step.llm for step in (cfg.steps or {}).values() if step is not None and step.get("llm") is not None]
        configured = executor.get("workers")
        if not any(
            step_workers(configured, llm.get("workers"), llm.get("rpm"), llm.get("tpm"), llm.get("server") is not None)
            > 1
            for llm in llms
        ):
            return False
    except Exception:  # a broken config: building the steps reports it properly, right after
        return False
    if WORKER_CONTEXT.get_start_method() != "forkserver":  # Windows: workers are spawned when a step needs them
        return False
    global _preloaded
    WORKER_CONTEXT.set_forkserver_preload(_PRELOAD)
    from multiprocessing import forkserver

    forkserver.ensure_running()  # returns at once; the server imports _PRELOAD on its own core
    _preloaded = True
    return True


def _short_text_file(path: str, lines: int) -> bool:
    """Whether `path` is a .jsonl or .csv file of fewer than `lines` lines (reads no further)."""
    if not path.endswith((".jsonl", ".csv")):
        return False
    try:
        with open(path, "rb") as handle:
            return sum(1 for _ in zip(range(lines), handle)) < lines
    except OSError:  # reading the input reports it, with the fix
        return False


class WorkerPool:
    """An executor for one row step: `worker_slots(workers)` worker processes share its rows, the parent
    taking what they leave (or a share beside them, see `parent_waits`).

    The workers start with the step and are stopped when it ends; `close` has nothing left to do.
    """

    def __init__(self, workers: int):
        self.workers = int(workers)

    def run_row_step(self, run: StepRun, storage: StepStorage, index: int, skip: set[str], pending: int) -> dict:
        """Run the step's rows here and in the workers; returns the step's usage, every process's merged."""
        workers = self.workers
        op, progress = run.op, run.progress
        for client in op.clients():
            client.rate_share = 1 / workers  # each process paces at its share of rpm / tpm
        slots = worker_slots(workers)
        queue, claims = WORKER_CONTEXT.Queue(), ChunkClaims(WORKER_CONTEXT, 1 + len(slots))
        processes = {
            slot: WORKER_CONTEXT.Process(
                target=_work,
                args=(
                    op,
                    storage,
                    index,
                    slot,
                    claims,
                    skip,
                    run.failures.path,
                    run.breaker,
                    queue,
                    worker_environment(),
                ),
                daemon=True,
            )
            for slot in slots
        }
        latest: dict[int, dict] = {}  # each worker's usage so far

        def report(kind: str, slot: int, payload) -> None:
            if kind == "progress":
                latest[slot] = take_progress(progress, slot, payload)
            elif kind == "end":
                latest[slot] = payload

        progress.usage = lambda: merge_usage([op.usage(), *list(latest.values())])
        with WorkerReports(f"step '{op.name}'", queue, processes, claims.stop, report) as reports:
            if parent_waits():
                reports.wait(())
            run_row_step(op, claims.rows(storage.read(index - 1), 0), run, skip)
            reports.wait(claims.idle_after_stop(claims.rows_read))
        return merge_usage([{**op.usage(), "rows_by_process": parent_rows(run.counts.done)}, *latest.values()])

    def close(self) -> None:
        """Nothing to release: each step stops its own workers."""
