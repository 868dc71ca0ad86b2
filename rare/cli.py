"""The `rare` command: Hydra composes `conf/pipeline.yaml` with the command line, the runner runs it."""

import atexit
import logging
import os
import sys
import threading

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rare.config.paths import config_dir, in_multirun
from rare.errors import RareError
from rare.pipeline.progress import console
from rare.rundir.resume import resume_overrides

EXIT_ROWS_FAILED = 1
EXIT_REFUSED = 2


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="pipeline")
def _run(cfg: DictConfig) -> None:
    # Imported here: the joblib launcher pickles this function by value with its globals, and
    # the console (it holds a lock) cannot be pickled.
    from rare.pipeline.progress import console
    from rare.pipeline.runner import run

    try:
        manifest = run(cfg, list(HydraConfig.get().overrides.task))
    except RareError as error:
        console.print(f"[bold red]rare:[/bold red] {error}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_REFUSED)
    except KeyboardInterrupt:
        console.print("[yellow]rare: interrupted; finished rows are kept in the run dir[/yellow]")
        sys.exit(130)
    if manifest.get("failures") and not in_multirun():
        sys.exit(EXIT_ROWS_FAILED)


# `rare <name> ...`: commands besides running the pipeline, each "module:function(argv) -> exit code"
SUBCOMMANDS: dict[str, str] = {
    "view": "rare.tools.view:main",
    "compare": "rare.tools.compare:main",
    "export": "rare.tools.export:main",
    "partial": "rare.tools.partial:main",
}


# `rare <name> overrides...`: a pipeline run with a recipe chosen for the user
ALIASES: dict[str, list[str]] = {
    "eval": ["recipe=eval"],  # the paper's evaluation: accuracy with and without the retrieved documents
}


def _subcommand(argv: list[str]) -> int | None:
    """Run `rare <name> args` when `name` is a subcommand; None when argv is a pipeline run."""
    if not argv or argv[0] not in SUBCOMMANDS:
        return None
    from importlib import import_module

    module, function = SUBCOMMANDS[argv[0]].split(":")
    return getattr(import_module(module), function)(argv[1:])


def moved_export_override(override: str) -> str:
    """`steps.export.KEY=V` (the export was a step) as `export.KEY=V`, and `steps.export=null` as
    `export.enabled=false`, with a warning naming the new key."""
    key, _, value = override.partition("=")
    if key.lstrip("+~") == "steps.export":
        new = "export.enabled=" + ("false" if value in ("null", "") or key.startswith("~") else "true")
    elif key.lstrip("+~").startswith("steps.export."):
        new = f"export.{key.lstrip('+~')[len('steps.export.') :]}={value}"
    else:
        return override
    logging.getLogger("rare").warning("%s: the export is no longer a step; read as %s", override, new)
    return new


def main() -> None:
    code = _subcommand(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    if sys.argv[1:] and sys.argv[1] in ALIASES:
        sys.argv[1:] = ALIASES[sys.argv[1]] + sys.argv[2:]
    sys.argv[1:] = [moved_export_override(a) for a in sys.argv[1:]]
    try:
        sys.argv[1:] = resume_overrides(sys.argv[1:])
    except RareError as error:
        console.print(f"[bold red]rare:[/bold red] {error}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_REFUSED)
    _run()


def console_main() -> None:
    """The `rare` command: `main`, then an exit that skips tearing down the interpreter.

    With litellm, pyserini and the JVM loaded, the interpreter's teardown (freeing thousands of
    modules and classes) takes a noticeable time after the run is over
    (`benchmarks/startup_costs.py` measures it). Everything that matters
    on the way out still runs first: the other threads finish, atexit hooks run (the embedded
    model's server stops), logs and output are flushed.
    """
    code = None
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code
    if code is not None and not isinstance(code, int):  # sys.exit("message"): printed, exit code 1
        print(code, file=sys.stderr)
        code = 1
    exit_without_teardown(code or 0)


def exit_without_teardown(code: int) -> None:
    """os._exit(code) once the threads are done, atexit hooks have run and output is flushed.

    The same first steps as the interpreter's own exit, in its order: threading._shutdown (thread
    pools are told to stop, then non-daemon threads are joined), then the atexit hooks.
    """
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing left to flush to
            pass
    os._exit(code)


if __name__ == "__main__":
    console_main()
