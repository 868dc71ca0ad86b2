"""`rare view <run dir>`: a self-contained static HTML report of a run, written to `<run dir>/report.html`.

One file with inline CSS and JS that fetches nothing: step funnel, tokens and cost per step,
histograms, and a card per row (question, scenario, the documents as the teacher saw them,
reasoning, answer, verdict). Every text from the run is HTML-escaped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rare.errors import RareError
from rare.tools.view.report import MAX_CARDS, build_report

REPORT = "report.html"


def write_report(run_dir: str | Path, output: str | Path | None = None, max_cards: int = MAX_CARDS) -> Path:
    """Write the report of `run_dir` (to `<run dir>/report.html` unless `output` is given); returns its path."""
    html = build_report(run_dir, max_cards)
    path = Path(output) if output else Path(run_dir).expanduser() / REPORT
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
    return path


def main(argv: list[str]) -> int:
    """`rare view RUN_DIR [--max-cards N] [-o FILE]`; prints the report's path, returns the exit code."""
    parser = argparse.ArgumentParser(prog="rare view", description="Write a static HTML report of a rare run.")
    parser.add_argument("run_dir", help="a run dir, e.g. outputs/2025-01-31/12-00-00")
    parser.add_argument("--max-cards", type=int, default=MAX_CARDS, help=f"row cards to show (default {MAX_CARDS})")
    parser.add_argument("-o", "--output", help="where to write the report (default <run dir>/report.html)")
    args = parser.parse_args(argv)
    from rare.pipeline.progress import console

    try:
        path = write_report(args.run_dir, args.output, args.max_cards)
    except RareError as error:
        console.print(f"[bold red]rare view:[/bold red] {error}", highlight=False, soft_wrap=True)
        return 2
    print(path)
    return 0
