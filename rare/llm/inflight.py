"""Claims on requests in flight, so runs sharing a response cache never send one request twice.

The response cache makes a request asked *after* an identical one was answered free. Runs in
parallel (a joblib sweep, worker processes) can miss the cache for the same request at the same
moment; a claim closes that gap. Before sending, a process claims the request's cache key: a
row in the `inflight` table of the cache's SQLite file, inserted only if nobody holds one. The
others wait until the answer lands in the cache, or until the claim is released without one
(the request failed), then one of them claims it. A claim whose process died (same host, pid
gone) or that is older than `stale_after_s` is taken over, so a killed run never blocks others.
"""

import asyncio
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from rare.storage.shared_sqlite import connect_shared

log = logging.getLogger(__name__)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS inflight "
    "(key TEXT PRIMARY KEY, owner TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL, claimed REAL NOT NULL)"
)
_HOST = socket.gethostname()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class InflightClaims:
    """Claims on cache keys, in the SQLite file at `path` (the response cache's own file).

    Args:
        path: the SQLite file; created (with its folder) when first used.
        stale_after_s: a claim older than this is taken over even if its process still runs;
            make it longer than the slowest request (timeout x retries).
        poll_s: first wait between looks at a claim held by someone else; doubles up to 1 s.
    """

    def __init__(self, path: str | os.PathLike, stale_after_s: float = 900.0, poll_s: float = 0.02):
        self.path = Path(path).expanduser()
        self.stale_after_s = float(stale_after_s)
        self.poll_s = float(poll_s)
        self._local = threading.local()

    def __getstate__(self) -> dict:
        return {"path": self.path, "stale_after_s": self.stale_after_s, "poll_s": self.poll_s}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["stale_after_s"], state["poll_s"])

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection (reopened after a fork)."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            connection = connect_shared(self.path)
            connection.execute(_SCHEMA)
            local.pid, local.connection = os.getpid(), connection
        return local.connection

    def try_claim(self, key: str) -> str | None:
        """Claim `key`; returns the claim's owner token, or None when someone else holds it."""
        owner = f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex}"
        cursor = self._connection().execute(
            "INSERT OR IGNORE INTO inflight (key, owner, host, pid, claimed) VALUES (?, ?, ?, ?, ?)",
            (key, owner, _HOST, os.getpid(), time.time()),
        )
        return owner if cursor.rowcount == 1 else None

    def release(self, key: str, owner: str) -> None:
        """Drop our claim on `key` (a claim taken over by someone else is left alone)."""
        self._connection().execute("DELETE FROM inflight WHERE key = ? AND owner = ?", (key, owner))

    def _take_over_if_stale(self, key: str) -> None:
        """Remove the claim on `key` if its process is gone or it is older than `stale_after_s`."""
        found = (
            self._connection()
            .execute("SELECT owner, host, pid, claimed FROM inflight WHERE key = ?", (key,))
            .fetchone()
        )
        if found is None:
            return
        owner, host, pid, claimed = found
        dead = host == _HOST and not _alive(pid)
        if dead or time.time() - claimed > self.stale_after_s:
            log.info(
                "taking over the %s claim on request %s (held by pid %s on %s)",
                "dead" if dead else "stale",
                key[:12],
                pid,
                host,
            )
            self._connection().execute("DELETE FROM inflight WHERE key = ? AND owner = ?", (key, owner))

    @asynccontextmanager
    async def claimed(self, key: str, lookup: Callable[[], dict | None]) -> AsyncIterator[dict | None]:
        """Yields the answer `lookup()` finds (someone else asked), or None: then the key is ours
        until the block ends, and the block should ask and store the answer before it does.

        `lookup` reads the response cache for `key`.
        """
        wait = self.poll_s
        while True:
            owner = self.try_claim(key)
            if owner is not None:
                break
            stored = lookup()
            if stored is not None:
                yield stored
                return
            self._take_over_if_stale(key)
            await asyncio.sleep(wait)
            wait = min(wait * 2, 1.0)
        try:
            stored = lookup()  # answered and released between our last look and our claim
            yield stored
        finally:
            self.release(key, owner)
