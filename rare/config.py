"""Where the configs and bundled examples live, and the OmegaConf resolvers they use."""

from pathlib import Path

from omegaconf import OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parent


def config_dir() -> Path:
    """The `conf/` folder: inside the package in a wheel, beside it in a source checkout."""
    packaged = PACKAGE_DIR / "conf"
    return packaged if packaged.is_dir() else PACKAGE_DIR.parent / "conf"


def example_path(name: str) -> str:
    """Path of a file in the bundled example corpus (`rare/examples/`)."""
    return str(PACKAGE_DIR / "examples" / name)


def register_resolvers() -> None:
    """Make `${rare_example:documents.jsonl}` usable in configs; safe to call twice."""
    if not OmegaConf.has_resolver("rare_example"):
        OmegaConf.register_new_resolver("rare_example", example_path)


register_resolvers()
