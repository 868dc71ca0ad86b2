"""`rare partial <run dir>`: the rows that have finished the last step so far, as JSONL, while the run goes.

They are read from what the run already wrote (the last step's journal and its worker shards,
complete lines only; its step file once it ended), so the run writes nothing twice and a resume
is unchanged. Each line is the one `dataset.jsonl` will hold (parquet step files aside, which
may type a value anew); the rows come in the order they finished, a row once. On a finished run it gives the rows of `dataset.jsonl`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rare.errors import RareError
from rare.rundir.partial import finished_lines
from rare.rundir.record import RunRecord
from rare.storage.formats import write_jsonl_lines


def main(argv: list[str]) -> int:
    """`rare partial RUN_DIR [--step NAME] [-o FILE]`; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="rare partial", description="Print the rows a rare run has finished so far, as JSONL."
    )
    parser.add_argument("run_dir", help="a run dir, e.g. outputs/2025-01-31/12-00-00 (running or not)")
    parser.add_argument("--step", help="the rows finished by this step (default: the last, what dataset.jsonl holds)")
    parser.add_argument("-o", "--output", help="write them to this file (replaced at once) instead of stdout")
    args = parser.parse_args(argv)
    from rare.pipeline.progress import console

    try:
        record = RunRecord(args.run_dir)
        status = record.manifest().status
        step = _step(record, args.step)
    except RareError as error:
        console.print(f"[bold red]rare partial:[/bold red] {error}", highlight=False, soft_wrap=True)
        return 2
    lines = finished_lines(record.storage, step)
    if args.output:
        count = write_jsonl_lines(Path(args.output), lines)
    else:
        count = _print(lines)
        if count is None:  # the reader stopped early (`| head`): nothing more to say
            return 0
    name = list(record.steps)[step - 1]
    where = f" to {args.output}" if args.output else ""
    console.print(f"{count} rows finished step {name} (run status: {status}){where}", highlight=False)
    return 0


def _step(record: RunRecord, name: str | None) -> int:
    if not record.steps:
        raise RareError(f"{record.path}: the run has no steps")
    if name is None:
        return len(record.steps)
    if name not in record.steps:
        raise RareError(f"--step {name}: not a step of this run ({', '.join(record.steps)})")
    return record.step_index(name)


def _print(lines) -> int | None:
    """Write the lines to stdout; their count, or None when the reader closed the pipe."""
    count = 0
    try:
        for line in lines:
            sys.stdout.buffer.write(line)
            count += 1
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        return None
    return count
