"""The generic runner: compose -> build and check everything -> run steps in order -> manifest.

It knows nothing about any particular operator: adding one needs no change here. A run dir
that already holds a run is resumed: finished rows are kept, only missing rows are asked.
"""

import logging
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rare.config.masking import redact, redact_override
from rare.errors import InputError, RareError
from rare.executors import build_executor
from rare.executors.contract import Executor
from rare.executors.local.workers import prestart_workers
from rare.inputs.rows import read_configured_input
from rare.llm.run_scope import start_run as start_llm_run
from rare.pipeline.build import build_steps, config_problems
from rare.pipeline.circuit_breaker import CircuitBreaker
from rare.pipeline.graph import graph_problems, pool_step, raise_if_problems
from rare.pipeline.progress import LOG_EVERY_S, ProgressBoard, StepProgress
from rare.pipeline.step_contract import CorpusOperator, Operator, RowOperator, StepContext
from rare.pipeline.step_run import DROPPED_FILE, StepRun, already_done, run_corpus_step
from rare.pipeline.stream import StreamStep
from rare.rundir.manifest import (
    MANIFEST,
    InputReport,
    Manifest,
    StepReport,
    package_versions,
    sha256_of_config,
    sha256_of_file,
)
from rare.rundir.partial import finished_lines
from rare.rundir.resume import check_same_config, failed_ids, forget_step_failures, retry_selection
from rare.rundir.summary import print_summary
from rare.storage.journal import Journal
from rare.storage.step_storage import StepStorage
from rare.tools.export import Export, export_settings

log = logging.getLogger(__name__)


def save_config(cfg: DictConfig, output_dir: Path, overrides: list[str], order: list[str]) -> dict:
    """The resolved config and the overrides, secrets masked; a resumed run must match it.

    Its `steps:` are saved in run `order` (disabled ones last), so whatever reads the run dir finds
    step N's file by counting steps.
    """
    masked = redact(OmegaConf.to_container(cfg, resolve=True))
    steps = masked.get("steps") or {}
    masked["steps"] = {**{name: steps[name] for name in order}, **{k: v for k, v in steps.items() if k not in order}}
    config_path = output_dir / "config.yaml"
    if config_path.exists():
        check_same_config(config_path, masked, bool(cfg.get("resume_force", False)))
    OmegaConf.save(OmegaConf.create(masked), config_path)
    OmegaConf.save(OmegaConf.create([redact_override(o) for o in overrides]), output_dir / "overrides.yaml")
    return masked


def run(cfg: DictConfig, overrides: list[str] | None = None) -> Manifest | dict:
    """Run (or resume) the pipeline `cfg` describes; returns the manifest, also written to the run dir
    (a dry run: its estimate)."""
    started = time.time()
    if not cfg.get("dry_run"):
        prestart_workers(cfg)  # the worker processes' imports run beside the start-up below
    steps = build_steps(cfg.steps, config_problems(cfg))  # a bad config is refused before the run dir is touched
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    previous = _previous_manifest(output_dir)
    masked = save_config(cfg, output_dir, list(overrides or []), [name for name, _ in steps])
    for index, (name, op) in enumerate(steps, 1):
        op.bind(StepContext(name=name, index=index, seed=int(cfg.seed)))

    # LLM layer: a dry run only estimates (no call, no key needed); a real run starts at $0 spent.
    if cfg.get("dry_run"):
        from rare.pipeline.dry_run import dry_run

        return dry_run(cfg, steps, output_dir)
    start_llm_run()

    storage: StepStorage = instantiate(cfg.storage)
    storage.name_steps([name for name, _ in steps])
    executor = build_executor(cfg.get("executor"))  # where row steps run
    exporter = _exporter(cfg, output_dir)  # the training-set files, written after the last step
    problems = [p for _, op in steps for p in op.check()] + (exporter.check() if exporter else [])
    raise_if_problems(problems, "The run cannot start")

    failures_path = output_dir / "failed.jsonl"
    selection = retry_selection(_plain(cfg.get("retry_failed")), [name for name, _ in steps])
    if selection is not None:
        retried = forget_step_failures(failures_path, *selection)
        log.info("retry_failed=%s: asking %d failed rows again", _plain(cfg.get("retry_failed")), retried)
    manifest = Manifest(
        status="running",
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        resumed=previous is not None,
        seed=cfg.seed,
        config_sha256=sha256_of_config(masked),
        overrides=[redact_override(o) for o in overrides or []],
        versions=package_versions(),
    )
    manifest_path = output_dir / MANIFEST
    with Journal(failures_path) as failures, ExitStack() as resources:
        try:
            manifest.input = _input(cfg.data, storage, failures, previous, bool(cfg.get("resume_force")))
            manifest.write(manifest_path)
            input_columns = set(manifest.input.columns)
            raise_if_problems(graph_problems([op for _, op in steps], input_columns), "The step graph is broken")
            resources.callback(executor.close)
            for _, op in steps:
                op.open()
                resources.callback(op.close)
            rows_in = manifest.input.rows
            ops = [op for _, op in steps]
            log_every_s = float(cfg.get("progress_log_s", LOG_EVERY_S))
            stream_from = _stream_start(ops, storage, failures) if _streams(executor) else len(ops) + 1
            for index, op in enumerate(ops[: stream_from - 1], 1):
                breaker = CircuitBreaker(**cfg.circuit_breaker)
                progress = StepProgress(op.name, rows_in, op.usage, log_every_s)
                step_started = time.time()
                try:
                    report = _run_step(op, index, storage, failures, progress, pool_step(ops, index), breaker, executor)
                except BaseException:
                    manifest.steps.append(_unfinished(op, index, progress, storage, failures, step_started))
                    raise
                manifest.steps.append(report)
                rows_in = report.rows_out
                manifest.write(manifest_path)  # readers of a running run see finished steps
            if stream_from <= len(ops):
                _run_stream(ops, stream_from, storage, failures, cfg, rows_in, log_every_s, executor, manifest)
                manifest.write(manifest_path)
            manifest.dataset = _export(storage, len(steps), output_dir)
            if exporter is not None:
                manifest.export = exporter.write()
            manifest.status = "completed"
        except RareError as error:
            manifest.status = f"aborted: {error}"
            raise
        except BaseException as error:
            manifest.status = f"interrupted: {type(error).__name__}"
            raise
        finally:
            manifest.wall_s = round(time.time() - started, 3)
            manifest.failures = sum(s.failed for s in manifest.steps) + manifest.skipped_inputs
            manifest.write(manifest_path)
    print_summary(manifest, output_dir)
    return manifest


def _plain(value):
    """A config value as plain Python (a ListConfig becomes a list)."""
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _previous_manifest(output_dir: Path) -> Manifest | None:
    path = output_dir / MANIFEST
    return Manifest.read(path) if path.exists() else None


def _input(
    data_cfg: DictConfig, storage: StepStorage, failures: Journal, previous: Manifest | None, force: bool
) -> InputReport:
    """Step 0, the normalized input with ids; reused as it is when resuming an unchanged input."""
    if previous and previous.input is not None and storage.is_done(0):
        current = sha256_of_file(Path(data_cfg.input).expanduser())
        if current != previous.input.sha256 and not force:
            raise InputError(
                f"{data_cfg.input} changed since this run started (sha256 {previous.input.sha256[:12]} -> "
                f"{current[:12]}); start a new run, or pass resume_force=true to keep the rows of the old input."
            )
        return previous.input
    summary, rows = read_configured_input(data_cfg)
    storage.write(0, rows)
    for skipped in summary.skipped:
        failures.append({"step": "input", "id": None, **skipped})
    if summary.skipped:
        log.warning(
            "skipped %d unusable input rows (lines %s%s); they are listed in failed.jsonl",
            len(summary.skipped),
            ", ".join(str(s["line"]) for s in summary.skipped[:10]),
            ", ..." if len(summary.skipped) > 10 else "",
        )
    return InputReport(
        path=summary.path,
        sha256=summary.sha256,
        rows=summary.rows,
        columns=sorted(summary.columns),
        skipped=summary.skipped,
    )


def _skip(op: Operator, index: int, storage: StepStorage, failures: Journal) -> set[str]:
    """The rows step `index` does not ask again: finished, failed or filtered before."""
    dropped = failures.path.with_name(DROPPED_FILE)
    return (
        storage.done_ids(index)
        | failed_ids(failures.path).get(op.name, set())
        | failed_ids(dropped).get(op.name, set())
    )


def _pending(op: Operator, index: int, storage: StepStorage, skip: set[str]) -> int:
    return sum(1 for row_id in storage.ids(index - 1) if not already_done(op, row_id, skip))


def _run_step(
    op: Operator,
    index: int,
    storage: StepStorage,
    failures: Journal,
    progress: StepProgress,
    pool: int,
    breaker: CircuitBreaker,
    executor: Executor,
) -> StepReport:
    """Run the rows of step `index` that are neither finished nor failed before, then finalize it.

    A corpus step first sees the rows of step `pool` (its `pool`: the step before, or the documents)."""
    started = time.time()
    skip = _skip(op, index, storage, failures)
    pending = _pending(op, index, storage, skip)
    usage = None
    if pending or not storage.is_done(index):
        storage.reopen(index)
        with storage.journal(index) as journal, progress:
            run = StepRun(op, journal, failures, progress, breaker)
            if isinstance(op, RowOperator):
                usage = executor.run_row_step(run, storage, index, skip, pending)
            else:
                if pool != index - 1:
                    log.debug(
                        "step '%s' prepares on the rows of %s (pool: %s)", op.name, storage.step_path(pool), op.pool
                    )
                run_corpus_step(op, storage.read(pool), storage.read(index - 1), run, skip)
        run.dropped.close()
        rows_out = _finalize(op, index, storage)
    else:
        rows_out = sum(1 for _ in storage.ids(index))
    return _report(op, index, storage, failures, progress.total, rows_out, pending, time.time() - started, usage)


def _finalize(op: Operator, index: int, storage: StepStorage) -> int:
    """The step's journal written to its step file in input order (the step before's file)."""
    return storage.finalize(index, (i for row_id in storage.ids(index - 1) for i in op.row_ids(row_id)))


def _report(
    op: Operator,
    index: int,
    storage: StepStorage,
    failures: Journal,
    rows_in: int,
    rows_out: int,
    asked: int,
    wall_s: float,
    usage: dict | None,
) -> StepReport:
    path = storage.step_path(index)
    return StepReport(
        **_identity_and_failures(op, failures),
        rows_in=rows_in,
        rows_out=rows_out,
        resumed=rows_in - asked,
        asked=asked,
        wall_s=round(wall_s, 3),
        usage=usage if usage is not None else op.usage(),
        output={"path": path.name, "sha256": sha256_of_file(path)},
    )


def _identity_and_failures(op: Operator, failures: Journal) -> dict:
    """A step report's name, operator, and rows failed (failed.jsonl) and filtered (dropped.jsonl: removed
    on purpose, not failures)."""
    dropped = failures.path.with_name(DROPPED_FILE)
    return {
        "name": op.name,
        "operator": f"{type(op).__module__}.{type(op).__name__}",
        "failed": len(failed_ids(failures.path).get(op.name, set())),
        "filtered": len(failed_ids(dropped).get(op.name, set())),
    }


def _streams(executor: Executor) -> bool:
    """Whether the executor lets the steps after the last barrier stream (`executor.streaming`)."""
    streams = getattr(executor, "streams", None)
    return bool(streams()) if callable(streams) else False


def _stream_start(ops: list[Operator], storage: StepStorage, failures: Journal) -> int:
    """The first step of the stream: after the last barrier (a corpus step whose pool is a streamed step's
    rows is one too), and after the leading steps a resumed run has nothing left to do in."""
    last_barrier = max((index for index, op in enumerate(ops, 1) if op.barrier), default=0)
    changed = True
    while changed:
        changed = False
        for index, op in enumerate(ops[last_barrier:], last_barrier + 1):
            if isinstance(op, CorpusOperator) and pool_step(ops, index) > last_barrier:
                last_barrier, changed = index, True
    start = last_barrier + 1
    while start <= len(ops) and storage.is_done(start) and storage.is_done(start - 1):
        op = ops[start - 1]
        if _pending(op, start, storage, _skip(op, start, storage, failures)):
            break
        start += 1  # finished: it runs (as nothing to do) step after step
    return start


def _run_stream(
    ops: list[Operator],
    start: int,
    storage: StepStorage,
    failures: Journal,
    cfg: DictConfig,
    rows_in: int,
    log_every_s: float,
    executor: Executor,
    manifest: Manifest,
) -> None:
    """Steps `start`.. as one stream (the executor's `run_stream`), then each finalized in order and reported
    in `manifest`; a stream that stops reports each of its steps with what it did by then."""
    board = ProgressBoard(log_every_s)
    steps, total = [], rows_in
    for index, op in enumerate(ops[start - 1 :], start):
        progress = board.step(op.name, total, op.usage)
        breaker = CircuitBreaker(**cfg.circuit_breaker)
        steps.append(
            StreamStep(op, index, pool_step(ops, index), _skip(op, index, storage, failures), breaker, progress)
        )
        total = total * len(op.row_ids("rows"))  # until the step before ends: its rows, fanned out
    started = time.time()
    try:
        executor.run_stream(steps, storage, failures, board, rows_in)
    except BaseException:
        manifest.steps.extend(_unfinished(s.op, s.index, s.progress, storage, failures, started) for s in steps)
        raise
    for step in steps:
        rows_out = _finalize(step.op, step.index, storage)
        counts, wall, usage = step.outcome()
        asked = counts.done + counts.failed + counts.filtered
        rows_seen = asked + counts.resumed
        manifest.steps.append(_report(step.op, step.index, storage, failures, rows_seen, rows_out, asked, wall, usage))


def _unfinished(
    op: Operator, index: int, progress: StepProgress, storage: StepStorage, failures: Journal, started: float
) -> StepReport:
    """What step `index` did before the run stopped in it: the rows its journals hold, its failures, and the
    usage of every process so far (what it spent), with the time since it started; it has no step file yet."""
    try:
        rows_out = sum(1 for _ in finished_lines(storage, index))
        usage = progress.usage() if progress.usage is not None else op.usage()
    except Exception as error:  # the stop's own cause is what the user must see, not this
        log.debug("step '%s': no report of the rows it finished (%s)", op.name, error)
        rows_out, usage = 0, {}
    return StepReport(
        **_identity_and_failures(op, failures),
        rows_in=int(progress.total or 0),
        rows_out=rows_out,
        wall_s=round(time.time() - started, 3),
        usage=usage,
        finished=False,
    )


def _exporter(cfg: DictConfig, output_dir: Path) -> Export | None:
    """The export the run's `export:` node asks for (None when it is off)."""
    node = cfg.get("export")
    if not node or not node.get("enabled"):
        return None
    return Export(output_dir, **export_settings(OmegaConf.to_container(node, resolve=True)))


def _export(storage: StepStorage, last_step: int, output_dir: Path) -> dict:
    """The final dataset as `dataset.jsonl` in the run dir, whatever the step file format."""
    path = output_dir / "dataset.jsonl"
    rows = storage.export_jsonl(last_step, path)
    return {"path": path.name, "rows": rows, "sha256": sha256_of_file(path)}
