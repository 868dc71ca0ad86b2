"""The executor contract: what the runner asks of whatever runs a row step's pending rows.

The runner keeps one implementation of everything else (journal, failed.jsonl, resume,
manifest); an executor only decides where `op.process` runs and hands every outcome back to
the step's `StepRun`. `LocalExecutor` (this machine), `WorkerPool` (this machine's cores)
and `RayExecutor` (a Ray cluster) satisfy it.

Streaming (`rare.pipeline.stream`) asks two optional methods: `streams()` (may the steps after
the last barrier run as one stream?) and `run_stream(steps, storage, failures, board, pending)`,
which runs the `StreamStep`s after the last barrier at once: in this process and worker processes
(`LocalExecutor`), or with each row step's calls on actors of its own (`RayExecutor`: the step's
`remote` stand-in, with `concurrency`, `async process(row)` and `usage()`).
"""

from typing import Protocol, runtime_checkable

from rare.pipeline.step_run import StepRun
from rare.storage.step_storage import StepStorage


@runtime_checkable
class Executor(Protocol):
    """Runs row steps for the runner; built once per run from `executor:` and closed at its end."""

    def run_row_step(self, run: StepRun, storage: StepStorage, index: int, skip: set[str], pending: int) -> dict | None:
        """Run the rows of step `index` (its input is step `index - 1` of `storage`) whose ids are not
        in `skip`, `pending` of them, handing each to `run.finished` or `run.failed`.

        Returns the step's usage when the calls were made elsewhere (other processes, actors);
        None means `run.op.usage()` holds it all.
        """
        ...

    def close(self) -> None:
        """Release what the executor started (a local Ray instance); called once, also on errors."""
        ...
