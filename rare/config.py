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


def if_set(value, default):
    """`value` unless it is null or empty, else `default` (used for the resumable run dir)."""
    return value if value not in (None, "") else default


def register_resolvers() -> None:
    """Register the resolvers the configs use (`rare_example`, `rare_if_set`); safe to call twice."""
    for name, function in (("rare_example", example_path), ("rare_if_set", if_set)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)


register_resolvers()
