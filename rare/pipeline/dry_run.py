"""`rare dry_run=true`: what a run would ask and cost, without asking anything.

No call, no API key, no network, no index: the steps are built, the input is read, and each
LLM step renders its prompt for a sample of rows. Fields an earlier step would write (a
question, hard negatives) are stand-ins of a typical size that say they are placeholders,
taken from the producing step's `dry_run_outputs` when it has one. Prompt tokens are counted
with litellm's tokenizer; completion tokens are `llm.expected_output_tokens` or
`params.max_tokens` (an upper bound); prices come from litellm's offline price table or
`llm.price`. The estimate assumes one call per row and every row surviving every step.

The table is printed and written to `dry_run.json` in the run dir.
"""

import logging
from pathlib import Path

from omegaconf import DictConfig
from rich.panel import Panel
from rich.table import Table

from rare.errors import RowError
from rare.inputs.rows import read_configured_input
from rare.llm.client import LLMClient
from rare.pipeline.progress import console
from rare.pipeline.step_contract import Operator
from rare.rundir.manifest import write_json

log = logging.getLogger(__name__)

SAMPLE_ROWS = 20  # prompts rendered and counted per step; their mean stands for every row
DEFAULT_OUTPUT_TOKENS = 1024  # completion estimate when neither expected_output_tokens nor max_tokens is set
FALLBACK_PLACEHOLDER_TOKENS = 50  # size of a stand-in for a field whose producer says nothing
SHOWN_PROMPT_CHARS = 4000  # the printed first prompt is cut here (dry_run.json keeps it whole)


def placeholder_text(label: str, tokens: int) -> str:
    """A clearly marked stand-in of about `tokens` tokens."""
    return f"[DRY-RUN PLACEHOLDER: {label}, ~{tokens} tokens]" + " word" * max(0, tokens - 12)


def _token_counter(model: str):
    import litellm

    def count(messages=None, text=None) -> int:
        try:
            return int(litellm.token_counter(model=model, messages=messages, text=text))
        except Exception:  # an unknown tokenizer: about four characters per token
            content = text if text is not None else " ".join(str(m.get("content", "")) for m in messages or [])
            return len(content) // 4

    return count


def _text(row: dict) -> str:
    """The row's document (a question row has none: its question stands in for the size)."""
    return row.get("text") or row.get("question") or ""


def _read_sample(cfg: DictConfig) -> tuple[list[dict], int, float, set[str]]:
    """(first rows, row count, mean characters per document, input columns)."""
    data = cfg.data
    summary, rows = read_configured_input(data)
    sample, count, chars = [], 0, 0
    for row in rows:
        count += 1
        chars += len(_text(row))
        if len(sample) < SAMPLE_ROWS:
            sample.append(row)
    return sample, count, chars / max(count, 1), set(summary.columns)


def _stand_ins(steps: list[tuple[str, Operator]], upto: int, placeholder) -> dict:
    """Columns that steps before `upto` would write, as typical-size placeholders."""
    fields = {}
    for _, op in steps[:upto]:
        produce = getattr(op, "dry_run_outputs", None)
        by_role = produce(placeholder) if produce else {}
        for role, column in op.outputs.items():
            fields[column] = by_role.get(role, placeholder(column, FALLBACK_PLACEHOLDER_TOKENS))
    return fields


def _estimate_step(name: str, op, position: int, steps, sample, rows: int, doc_tokens: int, input_columns) -> dict:
    llm: LLMClient = op.clients()[0]  # the step's own client
    count = _token_counter(llm.model)

    def placeholder(label: str, tokens: int | None = None) -> str:
        return placeholder_text(label, doc_tokens if tokens is None else tokens)

    stand_ins = _stand_ins(steps, position, placeholder)
    prompts = []
    for row in sample:
        filled = {**{k: v for k, v in stand_ins.items() if k not in input_columns}, **row}
        try:
            prompts.append(op.messages(filled))
        except RowError:
            continue  # this row would fail; the others stand for the step
    if not prompts:
        return {"step": name, "llm": True, "model": llm.model, "calls": rows, "problem": "no sample row renders"}
    mean_prompt = sum(count(messages=m) for m in prompts) / len(prompts)
    per_call_output = llm.expected_output_tokens or int(llm.params.get("max_tokens") or DEFAULT_OUTPUT_TOKENS)
    prompt_tokens, completion_tokens = round(mean_prompt * rows), per_call_output * rows
    prices = llm.token_prices()
    cost = None if prices is None else prompt_tokens * prices[0] + completion_tokens * prices[1]
    return {
        "step": name,
        "llm": True,
        "model": llm.model,
        "mode": llm.mode,
        "calls": rows,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_per_call": round(mean_prompt, 1),
        "completion_tokens_per_call": per_call_output,
        "completion_from": "llm.expected_output_tokens" if llm.expected_output_tokens else "llm.params.max_tokens",
        "price_from": None if prices is None else ("llm.price" if llm.price is not None else "litellm price table"),
        "cost_usd": None if cost is None else round(cost, 6),
        "first_prompt": prompts[0],
    }


def dry_run(cfg: DictConfig, steps: list[tuple[str, Operator]], output_dir: Path) -> dict:
    """Estimate every step of the run `cfg` describes; print it, write `dry_run.json`, return it."""
    sample, rows, mean_chars, input_columns = _read_sample(cfg)
    first_model = next((op.clients()[0].model for _, op in steps if op.clients()), "gpt-4o")
    count = _token_counter(first_model)
    sample_chars = sum(len(_text(r)) for r in sample) or 1
    doc_tokens = max(1, round(sum(count(text=_text(r)) for r in sample) / sample_chars * mean_chars))
    reports, step_rows = [], rows
    for position, (name, op) in enumerate(steps):
        if op.clients() and hasattr(op, "messages"):
            reports.append(_estimate_step(name, op, position, steps, sample, step_rows, doc_tokens, input_columns))
        else:
            reports.append(
                {"step": name, "llm": False, "calls": 0, "note": "no LLM calls (no index is built in a dry run)"}
            )
        step_rows *= len(op.row_ids("row"))  # a fan-out step (queries_per_doc) multiplies the rows after it
    priced = [r["cost_usd"] for r in reports if r.get("llm")]
    report = {
        "dry_run": True,
        "input": {"path": str(cfg.data.input), "rows": rows, "mean_document_tokens": doc_tokens},
        "assumptions": "one call per row (re-asks after unusable answers and verify's extra samples not counted); every row "
        "survives every step; "
        "completion tokens per call = llm.expected_output_tokens or llm.params.max_tokens",
        "steps": reports,
        "total": {
            "calls": sum(r["calls"] for r in reports),
            "prompt_tokens": sum(r.get("prompt_tokens", 0) for r in reports),
            "completion_tokens": sum(r.get("completion_tokens", 0) for r in reports),
            "cost_usd": None if None in priced else round(sum(priced), 6),
        },
    }
    write_json(output_dir / "dry_run.json", report)
    print_dry_run(report, output_dir)
    return report


def print_dry_run(report: dict, output_dir: Path) -> None:
    for step in report["steps"]:
        if step.get("first_prompt"):
            text = "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in step["first_prompt"])
            if len(text) > SHOWN_PROMPT_CHARS:
                text = (
                    text[:SHOWN_PROMPT_CHARS]
                    + f"\n… ({len(text) - SHOWN_PROMPT_CHARS} more characters in dry_run.json)"
                )
            console.print(Panel(text, title=f"{step['step']}: first prompt", title_align="left"), highlight=False)
    table = Table(title=f"rare dry run: {report['input']['rows']} input rows, no calls made", title_justify="left")
    for column in ("step", "model", "calls", "prompt tok", "completion tok", "cost $"):
        table.add_column(column, justify="left" if column in ("step", "model") else "right")

    def money(value) -> str:
        return "unknown" if value is None else f"{value:.4f}"

    for step in report["steps"]:
        if not step.get("llm"):
            table.add_row(step["step"], "-", "0", "", "", "")
            continue
        table.add_row(
            step["step"],
            f"{step['model']}" + (" (batch)" if step.get("mode") == "batch" else ""),
            f"{step['calls']:,}",
            f"{step.get('prompt_tokens', 0):,}",
            f"{step.get('completion_tokens', 0):,}",
            money(step.get("cost_usd")),
        )
    total = report["total"]
    table.add_row(
        "total",
        "",
        f"{total['calls']:,}",
        f"{total['prompt_tokens']:,}",
        f"{total['completion_tokens']:,}",
        money(total["cost_usd"]),
    )
    console.print(table)
    unpriced = sorted({s["model"] for s in report["steps"] if s.get("llm") and s.get("cost_usd") is None})
    if unpriced:
        console.print(
            f"litellm has no price for {', '.join(unpriced)}: set llm.price to estimate the cost", highlight=False
        )
    console.print(f"estimate written to {output_dir / 'dry_run.json'}; {report['assumptions']}", highlight=False)
