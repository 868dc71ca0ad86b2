"""Resuming a run dir: its saved overrides come back, a changed config is refused with a diff,
and rows that finished (or failed, unless retried) are never asked again."""

import difflib
import json
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

from rare.config.masking import MASK
from rare.errors import ConfigError

# Keys that say how to resume or where to run, not what to compute: they may change between attempts.
RESUME_KEYS = ("resume", "resume_force", "retry_failed", "dry_run", "executor")
PROCESS_KEYS = ("workers",)  # in an LLM client's settings: how many processes ask, not what they ask (deprecated)


def override_key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def resume_overrides(argv: list[str]) -> list[str]:
    """`rare resume=DIR x=1` -> the run's saved overrides, then the new ones (new ones win).

    Masked secrets are not replayed: the key comes from the environment or the command line.
    """
    resume_dir = next((a.partition("=")[2] for a in argv if override_key(a) == "resume"), None)
    if not resume_dir:
        return argv
    saved_path = Path(resume_dir) / "overrides.yaml"
    if not saved_path.exists():
        raise ConfigError(f"resume={resume_dir}: no overrides.yaml there; point resume at a rare run dir")
    given = {override_key(a) for a in argv}
    saved = [
        o
        for o in OmegaConf.to_container(OmegaConf.load(saved_path))
        if override_key(o) not in given and override_key(o) not in RESUME_KEYS and not o.endswith(f"={MASK}")
    ]
    return saved + argv


def _comparable(config: dict) -> dict:
    comparable = _without_process_keys({k: v for k, v in config.items() if k not in RESUME_KEYS})
    storage = comparable.get("storage")
    if isinstance(storage, dict):  # the step files on disk decide their naming (run dirs from before names)
        comparable["storage"] = {k: v for k, v in storage.items() if k != "naming"}
    return comparable


def _without_process_keys(node):
    """`node` without the process counts of the LLM clients in it (the llm node and every step's)."""
    if isinstance(node, dict):
        client = str(node.get("_target_", "")).endswith(".LLMClient")
        return {k: _without_process_keys(v) for k, v in node.items() if not (client and k in PROCESS_KEYS)}
    if isinstance(node, list):
        return [_without_process_keys(v) for v in node]
    return node


def check_same_config(saved_path: Path, masked: dict, force: bool) -> None:
    """Refuse to resume with a config that computes something else, showing the difference."""
    saved = OmegaConf.to_container(OmegaConf.load(saved_path))
    if _comparable(saved) == _comparable(masked) or force:
        return
    before = OmegaConf.to_yaml(OmegaConf.create(_comparable(saved))).splitlines()
    after = OmegaConf.to_yaml(OmegaConf.create(_comparable(masked))).splitlines()
    diff = "\n".join(difflib.unified_diff(before, after, "saved config", "this config", lineterm="", n=1))
    raise ConfigError(
        f"{saved_path.parent} was run with another config; resuming would mix two experiments:\n{diff}\n"
        "Start a new run instead, or pass resume_force=true to resume anyway."
    )


def _step_of(line: str) -> str | None:
    try:
        return json.loads(line).get("step")
    except (ValueError, AttributeError):
        return None


def failed_ids(failures_path: Path) -> dict[str, set[str]]:
    """Row ids that failed, per step name."""
    by_step: dict[str, set[str]] = defaultdict(set)
    if failures_path.exists():
        with open(failures_path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a torn last line
                if record.get("id") is not None:
                    by_step[record["step"]].add(record["id"])
    return by_step


def retry_selection(value, step_names: list[str]) -> tuple[set[str], set[str]] | None:
    """What `retry_failed` asks again: (steps, failure kinds), an empty set meaning all; None = nothing.

    `true` is every failed row; a step name (`doc2query`) that step's; a failure kind (`length`,
    `empty`, `unusable`, `refused`, `rate_limited`, `transient`, `error`, `row`) the rows that
    failed that way; a list (`[reason_distill,length]`) combines them: the rows of those steps that
    failed in those ways.
    """
    from rare.llm.content import FAILURE_KINDS  # no litellm: a plain module

    if value is None or value is False or (isinstance(value, str) and value.lower() in ("false", "")):
        return None
    if value is True or (isinstance(value, str) and value.lower() == "true"):
        return set(), set()
    names = [value] if isinstance(value, str) else [str(v) for v in value]
    steps, kinds, unknown = set(), set(), []
    for name in (n.strip() for n in names):
        if name in step_names:
            steps.add(name)
        elif name in FAILURE_KINDS:
            kinds.add(name)
        else:
            unknown.append(name)
    if unknown:
        raise ConfigError(
            f"retry_failed={value}: {', '.join(map(repr, unknown))} is neither a step of this run ({', '.join(step_names)}) "
            f"nor a failure kind ({', '.join(FAILURE_KINDS)}); use true for every failed row"
        )
    return steps, kinds


def _selected(record: dict, steps: set[str], kinds: set[str]) -> bool:
    if record.get("step") == "input" or record.get("id") is None:
        return False  # unusable input rows stay listed: asking again cannot fix them
    kind = record.get("kind") or ("length" if "finish_reason=length" in str(record.get("reason")) else "row")
    return (not steps or record.get("step") in steps) and (not kinds or kind in kinds)


def forget_step_failures(failures_path: Path, steps: set[str] | None = None, kinds: set[str] | None = None) -> int:
    """Drop the step failures `retry_failed` selects (see `retry_selection`; none given = every
    step failure), so that those rows are asked again and recorded afresh; returns how many."""
    if not failures_path.exists():
        return 0
    lines = failures_path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn last line
        if not _selected(record, steps or set(), kinds or set()):
            kept.append(line)
    tmp = failures_path.with_name(failures_path.name + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    tmp.replace(failures_path)
    return len(lines) - len(kept)
