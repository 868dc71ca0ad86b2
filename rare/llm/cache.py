"""The response cache: answers keyed by the sha256 of the request, in one SQLite file shared by runs.

The key covers everything that decides an answer (model, endpoint, messages, sampling
parameters with the seed, response_format), so rerunning a run asks nothing and changing one
prompt asks only the requests it changes. Only successful answers are stored.

SQLite in WAL mode with a busy timeout lets several runs (processes) read and write the same
file at once. Each process and thread opens its own connection lazily; a pickled cache (sent
to a worker process) carries only its settings, never a connection.

New answers are written in batches (`write_every` answers, or after `WRITE_AFTER_S`, in one
transaction): one write per answer made processes wait on each other's write lock, and
SQLite's busy wait blocks the event loop. Answers not yet written are served from memory;
`flush()` writes them (each step's end, `close()`). A crash can lose only those few cache
entries, never rows: finished rows are in the step's journal.

Keys leave the answer cap out (`rare.llm.content`); a rare from before that keyed the whole
request, and the client still looks such answers up on a miss. That second key costs as much as
the first (the whole request encoded and hashed again: 0.15 ms for a prompt of four 1,400-word
documents), so a file known to hold no old key is marked (`KEYS_VERSION` in SQLite's
`user_version`) and skips it; the first check of an unmarked file looks for one old answer (they
have no `max_tokens`).
"""

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from rare.storage.shared_sqlite import BUSY_TIMEOUT_MS, connect_shared

log = logging.getLogger(__name__)

CACHE_MODES = ("readwrite", "readonly")
WRITE_EVERY = 64  # answers per write transaction
WRITE_AFTER_S = 1.0  # an answer waits at most about this long (until the next answer arrives) to be written
KEYS_VERSION = 1  # user_version of a file holding no answer under an old whole-request key
_OLD_ANSWER = """SELECT 1 FROM responses WHERE value NOT LIKE '%"max_tokens":%' LIMIT 1"""
_SCHEMA = "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)"


def request_key(request: dict) -> str:
    """sha256 hex of the canonical JSON of a request (sorted keys, no whitespace)."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ResponseCache:
    """Answers by request key in SQLite at `path`.

    Args:
        path: the SQLite file; its folder is created when the cache is first written.
        mode: `readwrite`, or `readonly` (use stored answers, never add any; a missing file
            is an empty cache).
    """

    def __init__(self, path: str | os.PathLike, mode: str = "readwrite", write_every: int = WRITE_EVERY):
        if mode not in CACHE_MODES:
            raise ValueError(f"cache_mode must be one of {CACHE_MODES}, got {mode!r}")
        self.path = Path(path).expanduser()
        self.mode = mode
        self.write_every = max(1, int(write_every))
        self._local = threading.local()
        self._write_failed = False
        self._old_keys: bool | None = None  # None: not checked yet in this process
        self._unwritten: dict[str, dict] = {}
        self._unwritten_since = 0.0
        self._unwritten_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r}, mode={self.mode!r})"

    def __getstate__(self) -> dict:
        self.flush()  # the copy (a worker process) reads the file: let it find every answer so far
        return {"path": self.path, "mode": self.mode, "write_every": self.write_every}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["mode"], state.get("write_every", WRITE_EVERY))

    @property
    def writable(self) -> bool:
        return self.mode == "readwrite"

    def _connection(self) -> sqlite3.Connection | None:
        """This thread's connection (reopened after a fork); None when a read-only cache has no file."""
        local = self._local
        if getattr(local, "pid", None) == os.getpid():
            return local.connection
        local.pid, local.connection = os.getpid(), None
        if self.writable:
            connection = connect_shared(self.path)
            connection.execute(_SCHEMA)
        elif self.path.exists():
            connection = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
            connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        else:
            return None
        local.connection = connection
        return connection

    def get(self, key: str) -> dict | None:
        """The stored answer for `key`, or None."""
        unwritten = self._unwritten.get(key)
        if unwritten is not None:
            return unwritten
        connection = self._connection()
        if connection is None:
            return None
        try:
            found = connection.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        except sqlite3.OperationalError as error:  # e.g. a read-only cache file without the table yet
            log.debug("response cache read failed: %s", error)
            return None
        return json.loads(found[0]) if found else None

    def holds_old_keys(self) -> bool:
        """Whether answers stored under the old whole-request keys may be in the file (checked once per process)."""
        if self._old_keys is None:
            self._old_keys = self._check_old_keys()
        return self._old_keys

    def _check_old_keys(self) -> bool:
        connection = self._connection()
        if connection is None:
            return False
        try:
            if connection.execute("PRAGMA user_version").fetchone()[0] >= KEYS_VERSION:
                return False
            old = connection.execute(_OLD_ANSWER).fetchone() is not None
            if not old and self.writable:
                connection.execute(f"PRAGMA user_version={KEYS_VERSION}")
        except sqlite3.Error as error:  # a read-only file without the table, a busy file: look the old keys up
            log.debug("response cache: could not check for old keys: %s", error)
            return True
        return old

    def put(self, key: str, value: dict) -> None:
        """Store an answer (read-only caches ignore this); written with the next batch of answers."""
        if not self.writable:
            return
        with self._unwritten_lock:
            if not self._unwritten:
                self._unwritten_since = time.monotonic()
            self._unwritten[key] = value
            due = len(self._unwritten) >= self.write_every or time.monotonic() - self._unwritten_since >= WRITE_AFTER_S
        if due:
            self.flush()

    def flush(self) -> None:
        """Write the answers kept in memory, in one transaction (they are served from memory until then)."""
        with self._unwritten_lock:
            items = list(self._unwritten.items())
        self.put_many(items)
        with self._unwritten_lock:
            for key, value in items:
                if self._unwritten.get(key) is value:
                    del self._unwritten[key]

    def put_many(self, items: list[tuple[str, dict]]) -> None:
        """Store many answers in one transaction now. A failed write is logged, never raised."""
        if not self.writable or not items:
            return
        now = time.time()
        rows = [(key, json.dumps(value, ensure_ascii=False, separators=(",", ":")), now) for key, value in items]
        connection = self._connection()
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany("INSERT OR REPLACE INTO responses (key, value, created) VALUES (?, ?, ?)", rows)
            connection.execute("COMMIT")
        except sqlite3.Error as error:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            if not self._write_failed:
                log.warning(
                    "could not write %d answers to the response cache %s (%s); answers are not being cached",
                    len(rows),
                    self.path,
                    error,
                )
                self._write_failed = True

    def __len__(self) -> int:
        self.flush()
        connection = self._connection()
        if connection is None:
            return 0
        return connection.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        """Write what is kept in memory, then close this thread's connection (others close when their thread or process ends)."""
        self.flush()
        connection = getattr(self._local, "connection", None)
        if connection is not None and getattr(self._local, "pid", None) == os.getpid():
            connection.close()
        self._local = threading.local()
