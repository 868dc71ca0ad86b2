"""Executors run a row step's pending rows and hand each outcome back to the runner's `StepRun`
(the contract: `rare.executors.contract.Executor`).

`local` (default) runs on this machine, sharding a big step over a `WorkerPool` of processes;
`ray` runs on a Ray cluster.
"""

from hydra.utils import instantiate

from rare.errors import ConfigError, RareError
from rare.executors.contract import Executor


def build_executor(cfg) -> Executor:
    """The configured executor (`executor:` in the config); none configured = the local one."""
    if not cfg:
        from rare.executors.local.executor import LocalExecutor

        return LocalExecutor()
    try:
        executor = instantiate(cfg)
    except Exception as error:  # Hydra wraps the constructor's error; show the user's own
        if isinstance(error.__cause__, RareError):
            raise error.__cause__ from None
        raise
    if not isinstance(executor, Executor):
        raise ConfigError(
            f"executor {cfg.get('_target_')} is not an executor: it needs run_row_step(run, storage, index, "
            "skip, pending) and close() (see rare.executors.contract)"
        )
    return executor
