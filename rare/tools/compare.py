"""`rare compare <multirun dir>`: one table row per run of a sweep, to choose between its combinations.

Per run: the overrides that differ between the runs, rows out, failures, tokens, cost, mean
reasoning length and, where a `verified` column exists, the verification rate. Each run's
`manifest.json` gives the counts; its `dataset.jsonl` is streamed line by line for the rest.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rare.errors import RareError
from rare.rundir.manifest import MANIFEST, Manifest
from rare.rundir.resume import override_key

REASONING, VERIFIED = "reasoning", "verified"  # the dataset columns read


@dataclass
class RunSummary:
    """What the table shows of one run."""

    name: str
    overrides: dict[str, str]
    status: str
    rows: int | None
    failures: int
    tokens: int
    cost_usd: float
    mean_reasoning_chars: float | None = None
    verified_rate: float | None = None


def _natural(path: Path) -> list:
    """Sort key comparing the numeric parts of a path as numbers (run 10 after run 9)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def find_runs(root: Path) -> list[Path]:
    """The run dirs under `root` (itself included), in sweep order."""
    return sorted((m.parent for m in root.rglob(MANIFEST)), key=lambda p: _natural(p.relative_to(root)))


def _dataset_stats(path: Path) -> tuple[float | None, float | None]:
    """(mean reasoning length in characters, share of rows verified) of a dataset, streamed."""
    reasoning_rows = reasoning_chars = judged = verified = 0
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            row = json.loads(line)
            if isinstance(row.get(REASONING), str):
                reasoning_rows += 1
                reasoning_chars += len(row[REASONING])
            if VERIFIED in row and row[VERIFIED] is not None:
                judged += 1
                verified += bool(row[VERIFIED])
    return (reasoning_chars / reasoning_rows if reasoning_rows else None), (verified / judged if judged else None)


def summarize(run_dir: Path, root: Path) -> RunSummary:
    """One run's summary from its manifest and dataset."""
    manifest = Manifest.read(run_dir / MANIFEST)
    steps = manifest.steps
    dataset = manifest.dataset or {}
    summary = RunSummary(
        name=str(run_dir.relative_to(root)) if run_dir != root else run_dir.name,
        overrides={override_key(o): o.partition("=")[2] for o in manifest.overrides},
        status=str(manifest.status),
        rows=dataset.get("rows", steps[-1].rows_out if steps else None),
        failures=int(manifest.failures or 0),
        tokens=manifest.tokens,
        cost_usd=manifest.cost_usd,
    )
    path = run_dir / dataset.get("path", "dataset.jsonl")
    if path.is_file():
        summary.mean_reasoning_chars, summary.verified_rate = _dataset_stats(path)
    return summary


def differing_keys(runs: list[RunSummary]) -> list[str]:
    """Override keys whose value is not the same in every run, in first-seen order."""
    keys = list(dict.fromkeys(k for run in runs for k in run.overrides))
    return [k for k in keys if len({run.overrides.get(k) for run in runs}) > 1]


def table(runs: list[RunSummary], title: str) -> Table:
    """The comparison table (the status column only when some run did not complete)."""
    keys = differing_keys(runs)
    show_status = any(run.status != "completed" for run in runs)
    show_verified = any(run.verified_rate is not None for run in runs)
    out = Table(title=title, title_justify="left")
    out.add_column("run")
    for key in keys:
        out.add_column(key)
    if show_status:
        out.add_column("status")
    for column in ("rows out", "failures", "tokens", "cost $", "reasoning chars"):
        out.add_column(column, justify="right")
    if show_verified:
        out.add_column("verified", justify="right")
    for run in runs:
        cells = [run.name, *(run.overrides.get(k, "-") for k in keys)]
        if show_status:
            cells.append(run.status)
        cells += [
            "-" if run.rows is None else str(run.rows),
            str(run.failures),
            f"{run.tokens:,}",
            f"{run.cost_usd:.4f}",
            "-" if run.mean_reasoning_chars is None else f"{run.mean_reasoning_chars:,.0f}",
        ]
        if show_verified:
            cells.append("-" if run.verified_rate is None else f"{run.verified_rate:.0%}")
        out.add_row(*cells)
    return out


def compare(root: str | Path) -> list[RunSummary]:
    """Summaries of every run under `root`; RareError when there are none."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise RareError(f"{root} is not a folder; pass a sweep's dir, e.g. outputs/multirun/2026-11-25/10-31-02")
    runs = find_runs(root)
    if not runs:
        raise RareError(
            f"{root} holds no rare runs (no {MANIFEST} in it or below); pass the dir a `rare -m ...` sweep "
            "printed, e.g. outputs/multirun/2026-11-25/10-31-02"
        )
    return [summarize(run, root) for run in runs]


def main(argv: list[str]) -> int:
    """`rare compare DIR`: print the table of the runs under DIR; returns the exit code."""
    parser = argparse.ArgumentParser(prog="rare compare", description="Compare the runs of a sweep in one table.")
    parser.add_argument("dir", help="a multirun dir (outputs/multirun/<date>/<time>) or any folder holding run dirs")
    args = parser.parse_args(argv)
    from rare.pipeline.progress import console

    try:
        runs = compare(args.dir)
    except RareError as error:
        console.print(f"[bold red]rare compare:[/bold red] {error}", highlight=False, soft_wrap=True)
        return 2
    Console().print(table(runs, f"rare compare: {args.dir} ({len(runs)} runs)"))  # stdout: the table is the output
    return 0
