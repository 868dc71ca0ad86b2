"""The rows a step has finished so far, read from what the run already wrote: safe while it runs.

While a step runs, its finished rows are the complete lines of its journal and of every worker
shard of it; once it ends, they are its step file. Nothing is written and nothing is locked, so a
reader never slows the run down or changes what a resume does. A row is given once (the first
copy of it, as `StepStorage.finalize` keeps), and each line is the one `dataset.jsonl` will hold
(with parquet step files, the values before parquet typed them: `0` among floats stays `0`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from rare.storage.formats import dumps, line_id
from rare.storage.journal import complete_lines
from rare.storage.step_storage import StepStorage

ATTEMPTS = 3  # reads again when a file moves under the reader (the step ended, or was reopened)


def finished_lines(storage: StepStorage, step: int) -> Iterator[bytes]:
    """The step's finished rows as JSONL lines, each ending in a newline, in the order they finished
    (the step file's order once the step ended)."""
    seen: set = set()
    for attempt in range(ATTEMPTS):
        try:
            for journal in storage.journals(step):
                if journal.path.exists():
                    yield from _new(complete_lines(journal.path), seen)
            # The step file is written before the journals go: every row finished before this
            # call is in a journal read above or in the step file.
            if storage.is_done(step):
                yield from _new(_step_file_lines(storage, step), seen)
            return
        except FileNotFoundError:
            if attempt == ATTEMPTS - 1:
                raise


def finished_rows(storage: StepStorage, step: int) -> Iterator[dict]:
    """`finished_lines` parsed."""
    return (json.loads(line) for line in finished_lines(storage, step))


def _new(lines: Iterable[bytes], seen: set) -> Iterator[bytes]:
    for line in lines:
        row_id = line_id(line)
        if row_id is not None and row_id not in seen:
            seen.add(row_id)
            yield line


def _step_file_lines(storage: StepStorage, step: int) -> Iterator[bytes]:
    if storage.cache_type == "jsonl":
        with open(storage.step_path(step), "rb") as handle:
            yield from (line for line in handle if line.strip())
    else:
        yield from ((dumps(row) + "\n").encode("utf-8") for row in storage.read(step))
