"""The dataset card (README.md) of an export: what made the data, how much survived, what it cost."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from omegaconf import OmegaConf

from rare.rundir.manifest import Manifest
from rare.rundir.record import RunRecord

SETTING_SKIP = {"_target_", "inputs", "outputs", "llm", "prompt", "run_dir"}  # not settings a reader compares runs by


def write_card(path: Path, record: RunRecord, export, exported: int, skipped: dict[str, int]) -> None:
    """Write the card: Hugging Face front matter (so `load_dataset(<folder>)` finds the parquet), then tables."""
    manifest = record.manifest()
    parts = [
        _front_matter(export.dataset_name),
        f"# {export.dataset_name}\n",
        _description(record),
        f"Exported {datetime.now(UTC).isoformat(timespec='seconds')} from run dir `{record.path.name}` "
        f"(seed {record.config.get('seed')}, config sha256 `{manifest.config_sha256[:12]}`).\n",
        _counts(manifest, exported, skipped),
        _models(record),
        _cost(manifest),
        _settings(record),
        _files(export),
        "## Config\n\n<details><summary>config.yaml of the run (secrets masked)</summary>\n\n```yaml\n"
        + OmegaConf.to_yaml(OmegaConf.create(record.config)).rstrip()
        + "\n```\n\n</details>\n",
    ]
    path.write_text("\n".join(parts), encoding="utf-8")


def _description(record: RunRecord) -> str:
    if any(str(step.get("_target_", "")).endswith(".AnswerCheck") for step in record.steps.values()):
        return (
            "Reasoning training data made with `rare` (Retrieval-Augmented Reasoning Modeling, the paper's recipe): "
            "labelled questions, documents retrieved for each from a knowledge corpus, and a teacher model's "
            "step-by-step reasoning ending in `<answer>`, kept only when its answer matches the gold (wrong paths "
            "re-sampled).\n"
        )
    return (
        "Reasoning training data made with `rare` (Retrieval-Augmented Reasoning Modeling): hard questions "
        "written from documents, BM25 hard negatives, and a teacher model's step-by-step reasoning over the "
        "positive document shuffled among its negatives.\n"
    )


def _front_matter(name: str) -> str:
    return (
        "---\n"
        f"pretty_name: {name}\n"
        "task_categories:\n- question-answering\n- text-generation\n"
        "tags:\n- rare\n- reasoning\n- synthetic\n"
        "configs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*.parquet\n"
        "---\n"
    )


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _counts(manifest: Manifest, exported: int, skipped: dict[str, int]) -> str:
    rows = [["input", "", manifest.input.rows if manifest.input else "", manifest.skipped_inputs, ""]]
    for step in manifest.steps:
        rows.append([step.name, step.rows_in, step.rows_out, step.failed, step.filtered])
    table = _table(["step", "rows in", "rows out", "failed", "filtered"], rows)
    skipped_lines = "".join(f"- skipped, {reason}: {count}\n" for reason, count in sorted(skipped.items()))
    return f"## Counts\n\n{table}\n**{exported} rows exported.**\n" + (skipped_lines or "- no row skipped at export\n")


def _models(record: RunRecord) -> str:
    models = record.models()
    if not models:
        return "## Models\n\nNo LLM step.\n"
    return "## Models\n\n" + _table(["step", "model"], [[step, f"`{model}`"] for step, model in models.items()])


def _cost(manifest: Manifest) -> str:
    rows, total = [], 0.0
    for step in manifest.steps:
        usage = step.usage
        if usage:
            total += step.cost_usd
            rows.append(
                [
                    step.name,
                    usage.get("calls", 0),
                    usage.get("cached_calls", 0),
                    usage.get("prompt_tokens", 0),
                    usage.get("completion_tokens", 0),
                    f"{usage.get('cost_usd', 0.0):.4f}",
                ]
            )
    rows.append(["**total**", "", "", "", "", f"**{total:.4f}**"])
    header = ["step", "calls", "cached calls", "prompt tokens", "completion tokens", "cost USD"]
    return "## Cost\n\n" + _table(header, rows)


def _settings(record: RunRecord) -> str:
    """Every step's own settings (filters, thresholds, samples), so two exports can be compared."""
    lines = []
    for name, step in record.steps.items():
        settings = {k: v for k, v in step.items() if k not in SETTING_SKIP}
        shown = ", ".join(f"{k}={_short(v)}" for k, v in settings.items()) or "defaults"
        lines.append(f"- `{name}` ({str(step.get('_target_', '')).rsplit('.', 1)[-1]}): {shown}")
    return "## Filters and settings\n\n" + "\n".join(lines) + "\n"


def _short(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_short(v)}" for k, v in value.items() if k != "_target_") + "}"
    return str(value)


def _files(export) -> str:
    return (
        "## Files\n\n"
        "- `data/train-*.parquet`: one row per example (`id`, `question`, `scenario`, `documents` in the order the "
        "teacher saw them, `positive_index` (1-based), `reasoning`, `answer`, `messages`, ...); "
        '`datasets.load_dataset("parquet", data_dir="<this folder>/data")` (loading the folder itself works too, '
        "but `datasets` caches it by folder name, so two exports both named `export` would share a cache entry).\n"
        '- `messages.jsonl`: OpenAI/ShareGPT chat format, `{"messages": [system, user, assistant]}`.\n'
        '- `prompt_completion.jsonl`: TRL\'s conversational prompt/completion, `{"prompt": [system, user], '
        '"completion": [assistant]}` (SFTTrainer puts the loss on the completion only).\n'
        '- `alpaca.jsonl`: `{"instruction", "input", "output"}` (instruction = the system prompt).\n'
        f"- `dataset_info.json`: LLaMA-Factory entries `{export.dataset_name}_messages` and `{export.dataset_name}_alpaca`; "
        "train with `dataset_dir: <this folder>`.\n"
        f"- assistant turn: {'`<think>reasoning</think>` then the final answer' if export.think_tags else 'the teacher text as written (reasoning, then its final answer)'}.\n"
    )
