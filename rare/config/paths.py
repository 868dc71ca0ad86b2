"""Where the configs and bundled examples live, and the OmegaConf resolvers they use."""

from pathlib import Path

from omegaconf import OmegaConf

from rare.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # rare/


def config_dir() -> Path:
    """The `conf/` folder: inside the package in a wheel, beside it in a source checkout."""
    packaged = PACKAGE_DIR / "conf"
    return packaged if packaged.is_dir() else PACKAGE_DIR.parent / "conf"


def example_path(name: str) -> str:
    """Path of a file in the bundled example corpus (`rare/examples/`)."""
    return str(PACKAGE_DIR / "examples" / name)


def in_multirun() -> bool:
    """Whether this is one job of a `--multirun` sweep (its jobs may run at once, e.g. with joblib)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN"


def if_set(value, default):
    """`value` unless it is null or empty, else `default` (used for the resumable run dir)."""
    return value if value not in (None, "") else default


def teacher_llm(llm, teacher):
    """The teacher's LLM: `llm` with the non-null keys of `teacher` merged in (`teacher.model=...`)."""

    def set_values(node):
        return {k: set_values(v) if isinstance(v, dict) else v for k, v in node.items() if v is not None}

    changes = set_values(OmegaConf.to_container(teacher, resolve=True))
    unknown = sorted(set(changes) - set(llm))
    if unknown:
        raise ConfigError(f"teacher.{unknown[0]} is not an llm setting; the teacher takes llm's keys: {sorted(llm)}")
    merged = OmegaConf.merge(llm, {})
    OmegaConf.set_struct(merged, False)  # a sampling parameter llm does not set (top_p) may be added
    return OmegaConf.merge(merged, changes)


def register_resolvers() -> None:
    """Register the resolvers the configs use (`rare_example`, `rare_if_set`, `rare_teacher`); safe to call twice."""
    for name, function in (("rare_example", example_path), ("rare_if_set", if_set), ("rare_teacher", teacher_llm)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)


register_resolvers()
