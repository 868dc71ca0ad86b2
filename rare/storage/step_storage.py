"""Step files, one per step: `{cache_path}/{file_name_prefix}_{step name}.{format}` (the input is
`..._input`), or DataFlow's numbered names, `{file_name_prefix}_step{N}.{format}` (DataFlow calls
the format `cache_type`), with `naming: numbered`."""

import glob
import json
import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from rare.errors import ConfigError
from rare.storage.formats import READERS, copy_file, line_id, read_ids, read_rows, write_jsonl_lines, write_rows
from rare.storage.journal import Journal

log = logging.getLogger(__name__)

NAMINGS = ("step", "numbered")
INPUT = "input"  # step 0's name; also the `step` of an unusable input row in failed.jsonl


def step_name_problem(name: str) -> str | None:
    """Why `name` cannot name a step file, or None."""
    if name == INPUT or re.fullmatch(r"step\d+", name):
        return f"steps.{name}: the name {name!r} is taken by rare's own files; rename the step"
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        return f"steps.{name}: a step name names its file; use letters, digits, '_', '-' and '.'"
    return None


class StepStorage:
    """Where each step's rows go. Step 0 is the normalized input; step N is the N-th step's output.

    While a step runs, finished rows go to its journal (`rare_doc2query.partial.jsonl`); when the
    step ends they are written in input order to the step file and the journal is removed.

    Args:
        cache_path: the folder of the step files.
        file_name_prefix: the start of every step file's name.
        format: jsonl, json or parquet.
        naming: `step` (`rare_doc2query.jsonl`: call `name_steps` first) or `numbered`
            (`rare_step1.jsonl`). A folder that already holds step files keeps the naming they have.
    """

    def __init__(self, cache_path: str, file_name_prefix: str = "rare", format: str = "jsonl", naming: str = "step"):  # noqa: A002
        if format not in READERS:
            raise ConfigError(f"storage.format={format!r} is not supported; choose one of {sorted(READERS)}")
        if naming not in NAMINGS:
            raise ConfigError(f"storage.naming={naming!r} is not a naming; choose one of {list(NAMINGS)}")
        self.cache_path = Path(cache_path)
        self.file_name_prefix = file_name_prefix
        self.cache_type = format
        self.naming = naming
        self.step_names: list[str] = []

    def name_steps(self, names: list[str]) -> None:
        """Name the files of steps 1..N after `names`, the run's steps in run order.

        Step files written by an earlier run in this folder decide the naming (a run dir of a rare
        from before step names resumes with its numbered files)."""
        self.step_names = list(names)
        on_disk = self._naming_on_disk()
        if on_disk is not None and on_disk != self.naming:
            log.info("%s holds %s step files: they keep that naming", self.cache_path, on_disk)
            self.naming = on_disk

    def _naming_on_disk(self) -> str | None:
        if not self.cache_path.is_dir():
            return None
        for naming, stem in (
            ("step", f"{self.file_name_prefix}_{INPUT}"),
            ("numbered", f"{self.file_name_prefix}_step0"),
        ):
            if any(self.cache_path.glob(f"{glob.escape(stem)}.*")):
                return naming
        return None

    def stem(self, step: int) -> str:
        """The step's file name without its extension (the input is step 0)."""
        if self.naming == "numbered":
            return f"{self.file_name_prefix}_step{step}"
        if step == 0:
            return f"{self.file_name_prefix}_{INPUT}"
        if step > len(self.step_names):
            raise ValueError(f"step {step} has no name: call name_steps with the run's steps first")
        return f"{self.file_name_prefix}_{self.step_names[step - 1]}"

    def step_path(self, step: int) -> Path:
        return self.cache_path / f"{self.stem(step)}.{self.cache_type}"

    def journal(self, step: int, shard: int | None = None) -> Journal:
        """The step's journal; worker processes each append to a shard of their own."""
        suffix = "" if shard is None else f"-w{shard}"
        return Journal(self.cache_path / f"{self.stem(step)}.partial{suffix}.jsonl")

    def journals(self, step: int) -> list[Journal]:
        """The step's journal and every worker shard of it that exists."""
        shards = sorted(self.cache_path.glob(f"{glob.escape(self.stem(step))}.partial-w*.jsonl"))
        return [self.journal(step), *(Journal(path) for path in shards)]

    def is_done(self, step: int) -> bool:
        return self.step_path(step).exists()

    def done_ids(self, step: int) -> set[str]:
        """Ids of the rows this step has finished, in its step file or its journal."""
        ids = set().union(*(journal.ids() for journal in self.journals(step)))
        if self.is_done(step):
            ids.update(self.ids(step))
        return ids

    def reopen(self, step: int) -> None:
        """Move a finished step's rows back into its journal so that more rows can join them."""
        if not self.is_done(step):
            return
        with self.journal(step) as journal:
            for row in self.read(step):
                journal.append(row)
        self.step_path(step).unlink()

    def read(self, step: int) -> Iterator[dict]:
        return read_rows(self.step_path(step), self.cache_type)

    def ids(self, step: int) -> Iterator:
        """The ids of a finished step's rows, in order, without reading the rest of each row."""
        return read_ids(self.step_path(step), self.cache_type)

    def export_jsonl(self, step: int, path: Path) -> int:
        """A finished step's rows as one JSONL file at `path`: copied as they are when the step file is JSONL."""
        if self.cache_type != "jsonl":
            return write_rows(path, self.read(step), "jsonl")
        copy_file(self.step_path(step), path)  # the same canonical lines a rewrite would give
        return sum(1 for _ in self.ids(step))

    def write(self, step: int, rows: Iterable[dict]) -> int:
        self.cache_path.mkdir(parents=True, exist_ok=True)
        return write_rows(self.step_path(step), rows, self.cache_type)

    def finalize(self, step: int, order: Iterable[str]) -> int:
        """Write the journals' rows in `order` (ids) to the step file, then drop the journals.

        Only ids and byte offsets are held in memory, never the rows themselves.
        """
        journals = [journal for journal in self.journals(step) if journal.path.exists()]
        offsets: dict[str, tuple[int, int]] = {}
        for number, journal in enumerate(journals):
            position = 0
            with open(journal.path, "rb") as handle:
                for line in handle:
                    if line.endswith(b"\n"):
                        row_id = line_id(line)
                        if row_id is not None:
                            offsets.setdefault(row_id, (number, position))
                    position += len(line)

        def lines() -> Iterator[bytes]:
            handles = [open(journal.path, "rb") for journal in journals]
            try:
                for row_id in order:
                    found = offsets.get(row_id)
                    if found is not None:
                        handle = handles[found[0]]
                        handle.seek(found[1])
                        yield handle.readline()
            finally:
                for handle in handles:
                    handle.close()

        if self.cache_type == "jsonl":  # journal lines are already the step file's lines: copied, not re-encoded
            count = write_jsonl_lines(self.step_path(step), lines())
        else:
            count = self.write(step, (json.loads(line) for line in lines()))
        for journal in journals:
            journal.path.unlink(missing_ok=True)
        return count
