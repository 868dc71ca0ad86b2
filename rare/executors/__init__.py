"""Executors run a row step's pending rows and hand each outcome back to the runner's `StepRun`.

The runner keeps one implementation of everything else (journal, failed.jsonl, resume,
manifest); an executor only decides where `op.process` runs. The contract, duck-typed:

    run_row_step(run, storage, index, skip, pending) -> dict | None   # the step's usage, None = op.usage()
    close()                                                             # release what the executor started

`local` (default) runs on this machine; `ray` runs on a Ray cluster.
"""

from hydra.utils import instantiate

from rare.errors import RareError


def build_executor(cfg):
    """The configured executor (`executor:` in the config); none configured = the local one."""
    if not cfg:
        from rare.executors.local import LocalExecutor

        return LocalExecutor()
    try:
        return instantiate(cfg)
    except Exception as error:  # Hydra wraps the constructor's error; show the user's own
        if isinstance(error.__cause__, RareError):
            raise error.__cause__ from None
        raise
