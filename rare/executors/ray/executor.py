"""Row steps on a Ray cluster: Ray Data `map_batches` over an actor pool, or actor pools fed by a stream.

A step run alone: the driver (the `rare` process) reads the pending rows, puts them in the
object store a slice at a time, and journals every outcome as the actors return it, through the
same `StepRun` as the local path: resume, failed.jsonl and the manifest stay one implementation.
A stream (`executor.streaming=true`): the driver runs `rare.pipeline.stream` as locally, and each
row step's `process` calls go to an actor pool of its own (`rare.executors.ray.remote_step`).
Corpus steps (BM25) are not sent here: they run in the driver, whose index is cached on disk.
"""

import json
import logging
import math
import pickle
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import islice

from rare.errors import ConfigError
from rare.executors.ray.crash_handlers import crash_handlers_kept
from rare.executors.ray.usage_snapshots import keep_latest
from rare.llm.budget import run_spend
from rare.llm.usage import merge_usage
from rare.pipeline.step_contract import Operator, RowOperator
from rare.pipeline.step_run import StepRun
from rare.pipeline.stream import StreamStep, run_stream
from rare.storage.formats import dumps
from rare.storage.step_storage import StepStorage

log = logging.getLogger(__name__)

ASYNC_BATCHES = 4  # Ray Data's default concurrency of an async batch UDF within one block (RAY_DATA_DEFAULT_ASYNC_BATCH_UDF_MAX_CONCURRENCY)

try:
    import ray
    import ray.data
except ImportError:  # reported when the executor is built, not halfway through a run
    ray = None


def init_ray(**kwargs) -> None:
    """`ray.init`, leaving the crash-signal handlers of this process (the Lucene JVM's) in place."""
    with crash_handlers_kept():
        ray.init(**kwargs)


def shutdown_ray() -> None:
    """`ray.shutdown`, leaving the crash-signal handlers of this process in place."""
    with crash_handlers_kept():
        ray.shutdown()


class RayExecutor:
    """Runs row steps as Ray Data `map_batches` over a pool of `RowStepActor`s.

    Args:
        address: Ray cluster to join (`auto`, `ray://host:10001`); None starts a local instance.
        num_cpus / object_store_memory: size of the local instance (ignored with `address`).
        actors: actors in the pool (streaming: in each LLM step's pool); None = one per `actor_cpus`
            of the cluster's CPUs (streaming: shared out between the LLM steps).
        actor_cpus: CPUs Ray reserves per actor.
        batch_size: rows per batch handed to an actor (streaming: per call, at most `CALL_ROWS`).
        concurrency: rows in flight per actor; None = the step's `llm.concurrency`.
        rows_per_dataset: pending rows held in the object store at once.
        streaming: true = the steps after the last barrier run as one stream: the driver hands each
            row on to the next step as soon as it is ready, each row step's calls go to a pool of
            actors of its own (`actors` each; `run_stream`), the BM25 step runs in the driver.
    """

    def __init__(
        self,
        address: str | None = None,
        num_cpus: int | None = None,
        object_store_memory: int | None = 200_000_000,
        actors: int | None = None,
        actor_cpus: float = 1,
        batch_size: int = 64,
        concurrency: int | None = None,
        rows_per_dataset: int = 50_000,
        streaming: bool = False,
    ):
        if ray is None:
            raise ConfigError('executor=ray needs Ray Data: pip install "ray[data]", or use executor=local')
        for name, value in (
            ("actors", actors),
            ("batch_size", batch_size),
            ("concurrency", concurrency),
            ("rows_per_dataset", rows_per_dataset),
        ):
            if value is not None and int(value) < 1:
                raise ConfigError(f"executor.{name} must be at least 1, got {value}")
        if float(actor_cpus) <= 0:
            raise ConfigError(f"executor.actor_cpus must be above 0, got {actor_cpus}")
        self.address = address
        self.num_cpus = num_cpus
        self.object_store_memory = object_store_memory
        self.actors = int(actors) if actors else None
        self.actor_cpus = float(actor_cpus)
        self.batch_size = int(batch_size)
        self.concurrency = int(concurrency) if concurrency else None
        self.rows_per_dataset = int(rows_per_dataset)
        self.streaming = bool(streaming)
        self._started = False

    def streams(self) -> bool:
        """Whether the runner may stream the steps after the last barrier (their calls on Ray actors: `run_stream`)."""
        return self.streaming

    def run_stream(self, steps: list[StreamStep], storage: StepStorage, failures, board, pending: int) -> None:
        """Run the `StreamStep`s as one stream in the driver, each row step's calls on actors of its own."""
        with self._stream_steps([step.op for step in steps]) as remotes:
            for step, remote in zip(steps, remotes):
                if remote is not None:
                    step.remote, step.progress.usage = remote, remote.usage
            names = ", ".join(step.op.name for step in steps)
            log.info("streaming %s on Ray actors: each row goes on as soon as it is ready", names)
            run_stream(steps, storage, failures, board)

    @contextmanager
    def _stream_steps(self, ops: list[Operator]) -> Iterator[list]:
        """For each step of a stream, what answers its rows' `process`: a `RemoteRowStep` over a pool of
        actors of its own (a row step), or None (a corpus step runs in the driver, on its cached index).

        All the stream's actors share one `RunLimits` (rate limits, the run's budget). Where `actors` is
        not set, the cluster's CPUs are shared out between the row steps, which run at the same time.
        """
        row_ops = [op for op in ops if isinstance(op, RowOperator)]
        for op in row_ops:
            _refuse_batch_mode(op)
        if not row_ops:
            yield [None] * len(ops)
            return
        self._connect()
        from rare.executors.ray.actor import RowStepActor  # imports ray-only code lazily
        from rare.executors.ray.limits import RunLimits
        from rare.executors.ray.remote_step import RemoteRowStep

        spent_before = run_spend().spent_usd
        limits = RunLimits.remote(spent_before)
        actors = self.actors or max(1, self._pool_size() // len(row_ops))
        cluster_cpus = ray.cluster_resources().get("CPU", 1)
        cpus = min(self.actor_cpus, cluster_cpus / (actors * len(row_ops)))  # all of them must fit, or Ray waits
        actor_class = ray.remote(RowStepActor).options(num_cpus=cpus)
        remote: dict[int, RemoteRowStep] = {}
        try:
            for op in row_ops:
                concurrency = self.concurrency or max(1, int(op.concurrency))
                pool = [actor_class.remote(op, limits, concurrency) for _ in range(actors)]
                remote[id(op)] = RemoteRowStep(op, pool, concurrency, self.batch_size)
                log.info("step %s: %d actors x %d rows in flight (streamed)", op.name, actors, concurrency)
            yield [remote.get(id(op)) for op in ops]
        finally:
            for step in remote.values():
                step.stop()
            run_spend().add(ray.get(limits.total.remote()) - spent_before)
            ray.kill(limits)

    def _connect(self) -> None:
        """Join the configured cluster, or start a local instance (kept for the whole run)."""
        if ray.is_initialized():
            return
        try:
            if self.address:
                _check_reachable(self.address)
                init_ray(address=self.address, logging_level="warning")
            else:
                init_ray(
                    num_cpus=self.num_cpus,
                    object_store_memory=self.object_store_memory,
                    include_dashboard=False,
                    _node_ip_address="127.0.0.1",
                    logging_level="warning",
                )
                self._started = True
        except (ConnectionError, RuntimeError, ValueError) as error:
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
            raise ConfigError(
                f"executor=ray could not start or join {where}: {error}. Start a cluster with `ray start --head` "
                "and pass executor.address=auto (or ray://HOST:10001), or leave executor.address=null for a local one."
            ) from error
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the runner draws its own progress
        logging.getLogger("ray.data").setLevel(logging.WARNING)

    def _pool_size(self) -> int:
        if self.actors:
            return self.actors
        cpus = ray.cluster_resources().get("CPU", 1)
        return max(1, int(cpus // self.actor_cpus))

    def run_row_step(self, run: StepRun, storage: StepStorage, index: int, skip: set[str], pending: int) -> dict | None:
        op = run.op
        from rare.executors.ray.actor import RowStepActor  # imports ray-only code lazily

        _refuse_batch_mode(op)
        rows = run.pending(storage.read(index - 1), skip)
        first = list(islice(rows, self.rows_per_dataset))
        if not first:
            return None
        self._connect()
        from rare.executors.ray.limits import RunLimits

        spent_before = run_spend().spent_usd
        limits = RunLimits.remote(spent_before)
        latest: dict[str, dict] = {}
        run.progress.usage = lambda: merge_usage(list(latest.values()))
        concurrency = self.concurrency or max(1, int(op.concurrency))
        actors = self._pool_size()
        # Ray Data runs an async UDF on up to ASYNC_BATCHES batches of one block at once, and one
        # block per actor at a time: blocks of several batches keep `concurrency` rows in flight.
        batches_per_block = max(1, min(ASYNC_BATCHES, math.ceil(concurrency / self.batch_size)))
        log.info("step %s: %d actors x %d rows in flight, batches of %d", op.name, actors, concurrency, self.batch_size)
        try:
            chunk = first
            while chunk:
                block_rows = self.batch_size * batches_per_block
                dataset = ray.data.from_items(
                    [{"row": dumps(row)} for row in chunk], override_num_blocks=math.ceil(len(chunk) / block_rows)
                ).map_batches(
                    RowStepActor,
                    fn_constructor_kwargs={"op": op, "limits": limits, "concurrency": concurrency},
                    batch_size=self.batch_size,
                    batch_format="pyarrow",
                    compute=ray.data.ActorPoolStrategy(
                        size=min(actors, math.ceil(len(chunk) / block_rows)),
                        max_tasks_in_flight_per_actor=2,  # the next block waits on the actor while this one runs
                    ),
                    num_cpus=self.actor_cpus,
                )
                _journal(dataset, run, latest)
                chunk = list(islice(rows, self.rows_per_dataset))
        finally:
            run_spend().add(ray.get(limits.total.remote()) - spent_before)
            ray.kill(limits)
        return merge_usage(list(latest.values()))

    def close(self) -> None:
        """Stop the local Ray instance this executor started (a joined cluster keeps running)."""
        if self._started and ray.is_initialized():
            shutdown_ray()
        self._started = False


def _refuse_batch_mode(op: RowOperator) -> None:
    batch_clients = [client.model for client in op.clients() if client.mode == "batch"]
    if batch_clients:
        raise ConfigError(
            f"step '{op.name}': llm.mode=batch ({batch_clients[0]}) submits from one process; use executor=local with it"
        )


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds on a `host:port` nobody listens on (Ray itself retries for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # `auto`, or a form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise ConnectionError(f"nothing answers at {host}:{port} ({error})") from error


def _journal(dataset, run: StepRun, latest: dict[str, dict]) -> None:
    """Record each outcome as its batch arrives; a run-stopping error stops after its batch."""
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        fatal = None
        for outcome in batch.to_pylist():
            if outcome["usage"] is not None:
                keep_latest(latest, outcome["actor"], json.loads(outcome["usage"]))
            row = json.loads(outcome["row"])
            if outcome["fatal"] is not None:
                fatal = fatal or pickle.loads(outcome["fatal"])
            elif outcome["error"] is not None:
                run.failed(row, pickle.loads(outcome["error"]))
            else:
                run.finished(row, json.loads(outcome["fields"]))
        if fatal is not None:
            raise fatal
