"""Type checks of the composed config before any work: one message per bad value, naming the
config key, the value given and the type expected.

Step parameters are checked against the type annotations of the class they build (so a
signature is the schema); the top-level run settings against the small model below.
"""

import inspect
from functools import cache
from typing import Annotated

from omegaconf import DictConfig, ListConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

# Numbers typed where text is expected (`llm.api_key=12345`) are meant as text.
_LAX = ConfigDict(arbitrary_types_allowed=True, coerce_numbers_to_str=True)


class QuestionSettings(BaseModel):
    """`data.questions:` (set by the qa recipe): the input columns of a labelled question."""

    model_config = ConfigDict(extra="forbid")
    question_field: str
    options_field: str
    answer_field: str
    context_field: str | None = None


class DataSettings(BaseModel):
    """`data:` in pipeline.yaml."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)
    input: str
    text_field: str
    id_field: str | None
    strict: bool
    limit: Annotated[int, Field(gt=0)] | None = Field(None, description="a positive int or null")
    questions: QuestionSettings | None = None


class CircuitBreakerSettings(BaseModel):
    """`circuit_breaker:` in pipeline.yaml."""

    model_config = ConfigDict(extra="forbid")
    window: int = Field(ge=0, description="an int >= 0")
    max_failure_rate: float = Field(ge=0, le=1, description="a float from 0 to 1")


class RunSettings(BaseModel):
    """The top-level keys of pipeline.yaml; config groups and steps are checked by their targets."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)
    seed: int
    resume: str | None = None
    resume_force: bool = False
    retry_failed: bool | str | list[str] = False  # true, a step name, a failure kind, or a list of them
    dry_run: bool = False
    progress_log_s: float = Field(30.0, ge=0, description="seconds >= 0")
    cache_dir: str
    data: DataSettings
    circuit_breaker: CircuitBreakerSettings


def type_name(annotation) -> str:
    """`int`, `float | None`, `Mapping[str, str] | None`: how a user reads a type."""
    if isinstance(annotation, type) and not getattr(annotation, "__args__", None):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("collections.abc.", "")


@cache
def _adapter(annotation) -> TypeAdapter:
    return TypeAdapter(annotation, config=_LAX)


def _problem(key: str, value, expected: str, reason: str) -> str:
    return f"{key}: got {value!r}, expected {expected} ({reason[:1].lower() + reason[1:]})"


def value_problems(annotation, value, key: str) -> list[str]:
    """Problems of `value` against `annotation` (an empty list when it fits)."""
    try:
        adapter = _adapter(annotation)
    except Exception:  # an annotation pydantic cannot check (a forward reference, a protocol): trust it
        return []
    try:
        adapter.validate_python(value)
    except ValidationError as error:
        return [_problem(key, value, type_name(annotation), error.errors()[0]["msg"])]
    return []


def _annotations(factory) -> dict[str, object]:
    """Parameter name -> annotation for `factory`'s signature, string annotations resolved where possible."""
    try:
        signature = inspect.signature(factory, eval_str=True)
    except Exception:  # an unresolvable string annotation: keep the ones that are real types
        signature = inspect.signature(factory)
    return {
        name: parameter.annotation
        for name, parameter in signature.parameters.items()
        if parameter.annotation is not inspect.Parameter.empty and not isinstance(parameter.annotation, str)
    }


def _builds_object(node) -> bool:
    """A node with a `_target_` somewhere inside becomes objects, which the signature cannot check as data."""
    if isinstance(node, DictConfig):
        return "_target_" in node or any(_builds_object(node._get_node(k)) for k in node)
    if isinstance(node, ListConfig):
        return any(_builds_object(node._get_node(i)) for i in range(len(node)))
    return False


def parameter_problems(factory, node: DictConfig) -> list[str]:
    """Each key given to `factory` in `node` against the type its signature annotates."""
    annotations = _annotations(factory)
    problems = []
    for key in node:
        name = str(key)
        if name.startswith("_") or name not in annotations:
            continue
        child = node[name]
        if _builds_object(child):
            continue
        value = OmegaConf.to_container(child, resolve=True) if isinstance(child, (DictConfig, ListConfig)) else child
        problems += value_problems(annotations[name], value, node._get_node(name)._get_full_key(None))
    return problems


def _expected(model: type[BaseModel], loc: tuple) -> str:
    """The annotation of the field at `loc` in `model`, as a user reads it."""
    annotation = None
    for part in loc:
        field = model.model_fields.get(str(part)) if model is not None else None
        if field is None:
            break
        annotation = field.annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    if annotation is None:
        return "no such key"
    return field.description or type_name(annotation)


def settings_problems(cfg: DictConfig) -> list[str]:
    """The top-level run settings (seed, data.*, circuit_breaker.*, ...) against `RunSettings`."""
    plain = {key: cfg[key] for key in RunSettings.model_fields if key in cfg}
    plain = {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v for k, v in plain.items()}
    try:
        RunSettings.model_validate(plain)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            key = ".".join(str(part) for part in item["loc"])
            if item["type"] == "extra_forbidden":
                parent = item["loc"][0]
                known = list(RunSettings.model_fields[parent].annotation.model_fields)
                problems.append(f"{key}: unknown key; {parent} takes {known}")
            elif item["type"] == "missing":
                problems.append(
                    f"{key}: missing; pipeline.yaml sets it, put it back (expected {_expected(RunSettings, item['loc'])})"
                )
            else:
                problems.append(_problem(key, item["input"], _expected(RunSettings, item["loc"]), item["msg"]))
        return problems
    return []
