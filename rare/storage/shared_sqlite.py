"""One SQLite file written by many processes at once: the response cache and its in-flight claims."""

import sqlite3
import time
from pathlib import Path

BUSY_TIMEOUT_MS = 60_000  # a writer waits this long for another process's write to finish
_WAL_ATTEMPTS = 50


def connect_shared(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode with a busy timeout, its folder created.

    Switching a new file to WAL needs an exclusive lock that SQLite does not wait for through
    the busy timeout, so processes opening a fresh file together retry that step briefly.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # one thread at a time, not always the one that opened it: a streamed corpus step works in its own
    # thread and is closed from the run's
    connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    for attempt in range(_WAL_ATTEMPTS):
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or attempt == _WAL_ATTEMPTS - 1:
                raise
            time.sleep(0.01 * (attempt + 1))
    connection.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
    return connection
