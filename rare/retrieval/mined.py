"""Hard negatives mined before, kept under everything that decides them, so a rerun reads them
instead of searching again.

A row's negatives are a function of its question and positive, the pool's index and the back
end's search settings (`Retriever.ranking_key`), the step's options, and the code that mines
them. The scope hashes all of these, the code by the source of the retrieval package and the
operator, so an edit to the mining logic never serves negatives the new code would not pick.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from rare.storage.shared_sqlite import connect_shared

FILE = "mined-negatives.sqlite"


def source_digest(files: Iterable[Path]) -> str:
    """A hash of the source `files` (the mining code)."""
    digest = hashlib.sha256()
    for path in sorted(set(map(Path, files))):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def mining_code(operator_file: str) -> list[Path]:
    """The files whose code decides mined negatives: the operator's and every retrieval module."""
    return [Path(operator_file), *Path(__file__).parent.rglob("*.py")]


class MinedCache:
    """Mined results by row key, in one SQLite file under the retrieval cache dir.

    Args:
        folder: the retrieval cache dir (`Retriever.cache_root`).
        scope: what decides the results besides the row (index, settings, options, code).
    """

    def __init__(self, folder: Path, scope: str):
        self.scope = hashlib.sha256(scope.encode()).hexdigest()
        self.path = Path(folder) / FILE
        self._db: sqlite3.Connection | None = None

    def key(self, question: str, positive_id: str, positive_text: str) -> str:
        # length-prefixed fields hashed as they are: no JSON copy of the (long) positive text
        digest = hashlib.sha256(self.scope.encode())
        for field in (question, positive_id, positive_text):
            data = field.encode("utf-8", "surrogatepass")
            digest.update(b"%d:" % len(data))
            digest.update(data)
        return digest.hexdigest()

    def get(self, keys: list[str]) -> dict[str, dict]:
        """The stored results among `keys`."""
        found: dict[str, dict] = {}
        db = self._connection()
        for start in range(0, len(keys), 500):  # SQLite's bound on query parameters
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, value in db.execute(f"SELECT key, value FROM mined WHERE key IN ({marks})", chunk):
                found[key] = json.loads(value)
        return found

    def put(self, results: dict[str, dict]) -> None:
        if not results:
            return
        db = self._connection()
        db.execute("BEGIN")
        try:
            db.executemany(
                "INSERT OR REPLACE INTO mined (key, value) VALUES (?, ?)",
                [(key, json.dumps(value, ensure_ascii=False)) for key, value in results.items()],
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = connect_shared(self.path)
            self._db.execute("CREATE TABLE IF NOT EXISTS mined (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        return self._db
