"""Turning `steps:` config into operators, with torchtune-style checks that name the real cause."""

import importlib
import inspect
import logging

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rare.config.validation import parameter_problems, settings_problems
from rare.errors import ConfigError, RareError
from rare.pipeline.graph import raise_if_problems, run_order
from rare.pipeline.step_contract import Operator
from rare.storage.step_storage import step_name_problem

log = logging.getLogger(__name__)


def locate(target: str):
    """Import `package.module.Name`, reporting the import's real error rather than Hydra's summary."""
    module_name, _, attribute = str(target).rpartition(".")
    if not module_name:
        raise ConfigError(f"_target_ {target!r} must be a dotted path like rare.operators.doc2query.Doc2Query")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"_target_ {target!r}: cannot import {module_name}: {error}") from error
    if not hasattr(module, attribute):
        public = sorted(name for name in vars(module) if not name.startswith("_") and name[0].isupper())
        raise ConfigError(f"_target_ {target!r}: {module_name} has no {attribute!r} (it has {public})")
    return getattr(module, attribute)


def target_problems(node, where: str) -> list[str]:
    """Every `_target_` below `node` imports and accepts the keys given to it."""
    problems = []
    if isinstance(node, DictConfig):
        target = node.get("_target_")
        if target is not None:
            try:
                factory = locate(target)
                kwargs = {k: None for k in node if not str(k).startswith("_")}
                inspect.signature(factory).bind(**kwargs)
                problems += parameter_problems(factory, node)
            except ConfigError as error:
                problems.append(f"{where}: {error}")
            except TypeError as error:
                accepted = list(inspect.signature(factory).parameters)
                problems.append(f"{where}: {target} does not accept these keys ({error}); it accepts {accepted}")
        for key in node:
            if not str(key).startswith("_"):
                try:
                    child = node[key]  # resolved, so that `llm: ${llm}` is checked too
                except Exception as error:
                    problems.append(f"{where}.{key}: {error}")
                    continue
                if isinstance(child, DictConfig):
                    problems += target_problems(child, child._get_full_key(None) or f"{where}.{key}")
    return problems


def config_problems(cfg: DictConfig) -> list[str]:
    """The run settings (seed, data, ...) and the targets built outside `steps:` (storage, executor)."""
    problems = settings_problems(cfg)
    for key in cfg:
        node = cfg._get_node(key)
        if key != "steps" and isinstance(node, DictConfig) and "_target_" in node:
            problems += target_problems(cfg[key], str(key))
    return problems


MOVED_EXPORT = (
    "steps.export: the export is no longer a step; it is written after the last step from the top-level "
    "`export` node: export.enabled=true, export.think_tags=..., export.dir=... (or later: `rare export <run dir>`)"
)


def build_steps(steps_cfg: DictConfig, problems: list[str] | None = None) -> list[tuple[str, Operator]]:
    """Instantiate every enabled step (a step set to null is disabled), in run order (`run_order`).

    Every target's keys and value types are checked first; `problems` found elsewhere (the run
    settings) are reported in the same message.
    """
    if not steps_cfg:
        raise ConfigError("the config has no steps: list at least one under `steps:` in pipeline.yaml")
    enabled = [(name, cfg) for name, cfg in steps_cfg.items() if cfg is not None]
    problems = list(problems or [])
    if steps_cfg.get("export") is not None:
        problems.append(MOVED_EXPORT)
        enabled = [(name, cfg) for name, cfg in enabled if name != "export"]
    problems += [p for p in (step_name_problem(str(name)) for name, _ in enabled) if p]
    for name, cfg in enabled:
        if not isinstance(cfg, DictConfig) or "_target_" not in cfg:
            problems.append(
                f"steps.{name}: a step needs a `_target_` (the operator class), got {OmegaConf.to_yaml(cfg)!r}"
            )
        else:
            problems += target_problems(cfg, f"steps.{name}")
    # a node several steps share (`llm`) is checked under each of them: report it once
    raise_if_problems(list(dict.fromkeys(problems)), "The config is not well-formed")
    operators = []
    for name, cfg in enabled:
        try:
            op = instantiate(cfg, _convert_="all")
        except Exception as error:  # Hydra wraps the constructor's error; show the real one
            cause = error.__cause__ or error
            if isinstance(cause, RareError):
                raise ConfigError(f"steps.{name}: {cause}") from cause
            raise ConfigError(f"steps.{name}: could not build {cfg._target_}: {cause}") from error
        if not isinstance(op, Operator):
            raise ConfigError(f"steps.{name}: {cfg._target_} is not a rare Operator")
        log.info("built step %s: %s", name, type(op).__name__)
        operators.append((name, op))
    return run_order(operators)
