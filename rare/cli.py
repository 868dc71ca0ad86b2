"""The `rare` command: Hydra composes `conf/pipeline.yaml` with the command line, the runner runs it."""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rare.config import config_dir, in_multirun
from rare.errors import RareError
from rare.progress import console
from rare.resume import resume_overrides

EXIT_ROWS_FAILED = 1
EXIT_REFUSED = 2


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="pipeline")
def _run(cfg: DictConfig) -> None:
    # Imported here: the joblib launcher pickles this function by value with its globals, and
    # the console (it holds a lock) cannot be pickled.
    from rare.progress import console
    from rare.runner import run

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
    "view": "rare.view:main",
    "compare": "rare.compare:main",
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


def main() -> None:
    code = _subcommand(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    if sys.argv[1:] and sys.argv[1] in ALIASES:
        sys.argv[1:] = ALIASES[sys.argv[1]] + sys.argv[2:]
    try:
        sys.argv[1:] = resume_overrides(sys.argv[1:])
    except RareError as error:
        console.print(f"[bold red]rare:[/bold red] {error}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_REFUSED)
    _run()


if __name__ == "__main__":
    main()
