"""Running `rare` in this process on the checkout's code (whatever `rare` is installed), for benchmarks."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402

from rare.config.paths import config_dir  # noqa: E402
from rare.pipeline.runner import run  # noqa: E402


def run_rare(folder: Path, server, *overrides: str) -> dict:
    """A run writing under `folder` against the test `server` (response cache off); returns the manifest."""
    GlobalHydra.instance().clear()
    base = [
        f"paths.output_dir={folder / 'run'}",
        f"cache_dir={folder / 'cache'}",
        "llm=openai",
        f"llm.api_base={server.url}",
        "llm.api_key=x",
        "llm.cache=false",
        "progress_log_s=0",
    ]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("pipeline", overrides=[*base, *overrides])
    return run(cfg)
