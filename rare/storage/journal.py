"""Append-only JSONL journal: each finished row is one flushed line, so a crash loses no row.

A `kill -9` can leave at most one torn last line; reading drops it and reopening truncates
it before appending again.
"""

import json
import os
from collections.abc import Iterator
from pathlib import Path

from rare.storage.formats import dumps


def complete_length(path: Path) -> int:
    """Byte length of the file up to and including its last newline."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        position = size
        while position > 0:
            step = min(65536, position)
            handle.seek(position - step)
            chunk = handle.read(step)
            newline = chunk.rfind(b"\n")
            if newline != -1:
                return position - step + newline + 1
            position -= step
    return 0


def complete_lines(path: Path, length: int | None = None) -> Iterator[bytes]:
    """The lines of `path` in its first `length` bytes (None: up to its last newline now), each with its
    newline: a line still being written is left out."""
    left = complete_length(path) if length is None else length
    with open(path, "rb") as handle:
        for line in handle:
            left -= len(line)
            if left < 0:
                return
            yield line


class Journal:
    """Rows of one step (or the run's failures), appended as they finish."""

    def __init__(self, path: Path, fsync: bool = False):
        self.path = Path(path)
        self.fsync = fsync
        self._handle = None

    def __iter__(self) -> Iterator[dict]:
        """Every complete row; a torn or unparsable line is skipped."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as handle:
            for line in handle:
                if not line.endswith(b"\n"):
                    break
                try:
                    yield json.loads(line)
                except ValueError:
                    continue

    def ids(self) -> set[str]:
        return {row["id"] for row in self}

    def append(self, row: dict) -> str:
        """Write `row` as one flushed line; returns the line (without its newline)."""
        if self._handle is None:
            self._open()
        line = dumps(row)
        self._handle.write(line + "\n")
        self._handle.flush()
        if self.fsync:
            os.fsync(self._handle.fileno())
        return line

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            keep = complete_length(self.path)
            if keep != self.path.stat().st_size:
                os.truncate(self.path, keep)
        self._handle = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
