"""The retrieval interface: BM25 over a corpus of (doc_id, text) pairs.

Every back end (pyserini, gensim, bm25s) implements :class:`Retriever`:

* ``check()`` fails fast, with a cause and a fix, if the back end cannot run here;
* ``index(docs)`` builds the index, or loads it from the cache when the same corpus
  and settings were indexed before (``docs`` may be a one-shot generator);
* ``search(queries, k)`` returns, per query, up to ``k`` hits best first. Only
  documents sharing at least one analyzed term with the query are hits (score > 0),
  so a query may get fewer than ``k`` hits, or none;
* ``fetch(doc_ids)`` returns the stored texts by id (unknown ids are left out; so are
  blank documents in the pyserini back end, which Lucene does not index).
"""

from __future__ import annotations

import operator
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class RetrieverUnavailable(RuntimeError):
    """The back end cannot run in this environment; the message names cause and fix."""


@dataclass(frozen=True)
class Hit:
    doc_id: str
    score: float


class Retriever(ABC):
    """BM25 over a corpus of (doc_id, text) pairs."""

    def check(self) -> None:
        """Raise :class:`RetrieverUnavailable` if this back end cannot run here. Cheap."""

    @abstractmethod
    def index(self, docs: Iterable[tuple[str, str]]) -> None:
        """Build the index over ``docs`` (streamed once), or load it from the cache."""

    @abstractmethod
    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        """Batch search: one list of at most ``k`` hits per query, best first."""

    @abstractmethod
    def fetch(self, doc_ids: Sequence[str]) -> dict[str, str]:
        """Stored texts by id; ids not in the index are left out."""


# --- small helpers shared by the back ends -------------------------------------------


def clean_text(text: str) -> str:
    """``text`` with lone surrogates replaced, so it encodes as UTF-8 (and crosses into Java)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def check_search_args(queries: Sequence[str], k: int) -> int:
    """Reject arguments every back end would mishandle; return ``k`` as an int."""
    if isinstance(queries, str):
        raise TypeError("search() takes a sequence of queries, not a single string")
    if isinstance(k, bool):
        raise ValueError(f"k must be a non-negative int, got {k!r}")
    try:
        k = operator.index(k)
    except TypeError:
        raise ValueError(f"k must be a non-negative int, got {k!r}") from None
    if k < 0:
        raise ValueError(f"k must be a non-negative int, got {k!r}")
    for query in queries:
        if not isinstance(query, str):
            raise TypeError(f"queries must be str, got {type(query).__name__}")
    return k


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress_bar(*, enabled: bool, desc: str, total: int | None = None, unit: str = "it"):
    """A tqdm bar (use as a context manager, call ``update(n)``), or a no-op when disabled.

    Bars are shown only when ``enabled`` and stderr is a terminal, so logs stay clean.
    """
    if not enabled or not sys.stderr.isatty():
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(desc=desc, total=total, unit=unit, dynamic_ncols=True)
