"""The table printed at the end of a run: rows, failures, calls, retries, tokens, cost and time per step.

Tokens and cost count every billed call, the unusable answers too; `failed $` is their part.
"""

from pathlib import Path

from rich.table import Table

from rare.pipeline.progress import console
from rare.rundir.manifest import Manifest


def print_summary(manifest: Manifest, output_dir: Path) -> None:
    table = Table(title="rare run", title_justify="left")
    for column in (
        "step",
        "rows in",
        "rows out",
        "failed",
        "filtered",
        "calls",
        "retries",
        "tokens",
        "cost $",
        "failed $",
        "time s",
    ):
        table.add_column(column, justify="left" if column == "step" else "right")
    total_cost = total_failed = 0.0
    for step in manifest.steps:
        usage = step.usage
        tokens = step.tokens
        total_cost += step.cost_usd
        total_failed += usage.get("failed_cost_usd", 0.0)
        table.add_row(
            step.name,
            str(step.rows_in),
            str(step.rows_out),
            str(step.failed),
            str(step.filtered),  # removed on purpose, listed in dropped.jsonl
            str(usage.get("calls", "")),
            str(usage.get("retries", "")),
            f"{tokens:,}" if usage else "",
            f"{usage['cost_usd']:.4f}" if usage else "",
            f"{usage.get('failed_cost_usd', 0.0):.4f}" if usage else "",  # billed calls whose answer was unusable
            f"{step.wall_s:.1f}",
        )
    console.print(table)
    failed = manifest.failures
    dataset = manifest.dataset or {}
    console.print(
        f"dataset: {output_dir / dataset.get('path', 'dataset.jsonl')} ({dataset.get('rows', 0)} rows), "
        f"cost ${total_cost:.4f}"
        + (f" (${total_failed:.4f} of it on unusable answers)" if total_failed else "")
        + f", {manifest.wall_s or 0.0:.1f} s"
        + (f", [yellow]{failed} failed rows in {output_dir / 'failed.jsonl'}[/yellow]" if failed else "")
    )
