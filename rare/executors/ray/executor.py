"""Row steps on a Ray cluster with Ray Data: pending rows -> `map_batches` over an actor pool.

The driver (the `rare` process) reads the pending rows, puts them in the object store a
slice at a time, and journals every outcome as the actors return it, through the same
`StepRun` as the local path: resume, failed.jsonl and the manifest stay one implementation.
Corpus steps (BM25) are not sent here: they run in the driver, whose index is cached on disk.
"""

import json
import logging
import math
import pickle
import socket
from itertools import islice

from rare.errors import ConfigError
from rare.executors.ray.crash_handlers import crash_handlers_kept
from rare.llm.budget import run_spend
from rare.llm.usage import merge_usage
from rare.pipeline.step_run import StepRun
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
        actors: actors in the pool; None = one per `actor_cpus` of the cluster's CPUs.
        actor_cpus: CPUs Ray reserves per actor.
        batch_size: rows per batch handed to an actor.
        concurrency: rows in flight per actor; None = the step's `llm.concurrency`.
        rows_per_dataset: pending rows held in the object store at once.
        streaming: accepted, not yet used: streaming runs in one process for now, so on Ray the
            steps run one after the other (said once in the log).
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
        """Never, for now: a stream runs in one process; Ray runs the steps one after the other."""
        if self.streaming:
            log.warning("executor.streaming=true runs in one process for now: on Ray the steps run one after the other")
        return False

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

        batch_clients = [client.model for client in op.clients() if client.mode == "batch"]
        if batch_clients:
            raise ConfigError(
                f"step '{op.name}': llm.mode=batch ({batch_clients[0]}) submits from one process; use executor=local with it"
            )
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
                _keep_latest(latest, outcome["actor"], json.loads(outcome["usage"]))
            row = json.loads(outcome["row"])
            if outcome["fatal"] is not None:
                fatal = fatal or pickle.loads(outcome["fatal"])
            elif outcome["error"] is not None:
                run.failed(row, pickle.loads(outcome["error"]))
            else:
                run.finished(row, json.loads(outcome["fields"]))
        if fatal is not None:
            raise fatal


def _keep_latest(latest: dict[str, dict], actor: str, usage: dict) -> None:
    """Keep an actor's newest usage snapshot. Its batches may arrive out of order, and its counters
    only grow, so the newest snapshot is the largest."""

    def size(snapshot: dict) -> tuple:
        return tuple(
            snapshot.get(key, 0) for key in ("calls", "cached_calls", "retries", "prompt_tokens", "completion_tokens")
        )

    if actor not in latest or size(usage) >= size(latest[actor]):
        latest[actor] = usage
