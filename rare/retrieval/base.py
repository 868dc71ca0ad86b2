"""The retrieval interface: ranking a pool of (doc_id, text) documents for questions.

Every back end (pyserini, gensim, bm25s, dense, hybrid) implements :class:`Retriever`, built
from one settings object (``rare.retrieval.settings``):

* ``check()`` fails fast, with a cause and a fix, if the back end cannot run here;
* ``prepare(docs)`` indexes ``docs`` (the dataset), or the external pool named by the
  ``corpus`` setting (a ``.jsonl`` file, or for pyserini a prebuilt Lucene index);
* ``index(docs)`` builds the index, or loads it from the cache when the same corpus
  and settings were indexed before (``docs`` may be a one-shot generator): one
  implementation here; a back end says what its index depends on (``index_settings``),
  how to build it (``_build``) and how to load it (``_open``);
* ``search(queries, k)`` returns, per query, up to ``k`` hits best first, ties in pool
  order. Only documents sharing at least one analyzed term with the query are hits
  (score > 0), so a query may get fewer than ``k`` hits, or none. ``search_rows`` is
  the same with pool rows instead of ids (``store`` maps rows to ids, texts, features);
* ``score(queries, texts)`` is the BM25 score each text would get for its query as a
  document of the pool (collection statistics from the index);
* ``fetch(doc_ids)`` returns the stored texts by id (unknown ids are left out).
"""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rare.retrieval.index_cache import IndexCache
from rare.retrieval.pool import DocStore, SpooledCorpus, read_corpus
from rare.retrieval.settings import BM25Settings, PoolSettings


class RetrieverUnavailable(RuntimeError):
    """The back end cannot run in this environment; the message names cause and fix."""


@dataclass(frozen=True)
class Hit:
    doc_id: str
    score: float


@dataclass
class Candidate:
    """One ranked hit with where it came from: its rank (1 = best) and score in each list that found it.

    ``margin_score`` is what the score-margin guard compares with the positive's (the BM25
    score for BM25 and hybrid back ends, the cosine for dense); None = not comparable.
    """

    row: int
    score: float
    ranks: dict[str, int]
    margin_score: float | None


class Retriever(ABC):
    """Retrieval over a pool of (doc_id, text) documents; `settings` are those every back end shares."""

    backend = "?"
    store = None  # after index(): the pool's documents by row (cache.DocStore or alike)

    def __init__(self, settings: PoolSettings) -> None:
        self.settings = settings
        self._cache = IndexCache(settings.cache_dir, self.backend)
        self.index_path: Path | None = None  # the index directory last opened
        self.index_reused: bool | None = None  # whether it came from the cache (nothing was built)

    @property
    def show_progress(self) -> bool:
        return bool(self.settings.show_progress)

    @property
    def corpus(self) -> str | None:
        """An external pool to index instead of the dataset (None: the dataset)."""
        return str(self.settings.corpus) if self.settings.corpus else None

    @property
    def cache_root(self) -> Path:
        """The folder this back end caches its indexes (and what is derived from them) in."""
        return self._cache.root

    def ranking_key(self) -> str | None:
        """Everything that decides this back end's rankings over the index it has open (the cached
        index's directory, named by content and settings, and the search settings), for caching
        what is mined with them; None = rankings not cacheable (no index, or one built elsewhere)."""
        return None

    def check(self) -> None:
        """Raise :class:`RetrieverUnavailable` if this back end cannot run here. Cheap."""

    def warm_up(self) -> None:
        """Start slow set-up in the background when the run starts (the JVM); the first search waits for it."""

    @property
    def external(self) -> bool:
        """Whether the pool is an external corpus rather than the documents given to ``prepare``."""
        return bool(self.corpus)

    def prepare(self, docs: Iterable[tuple[str, str]]) -> None:
        """Index ``docs``, or the external ``corpus`` when one is configured (``docs`` unused)."""
        if not self.corpus:
            self.index(docs)
            return
        path = Path(self.corpus).expanduser()
        if path.is_dir():
            self.open_prebuilt(path)
        elif path.is_file():
            self.index(read_corpus(path))
        else:
            raise FileNotFoundError(f"retriever.corpus={self.corpus}: no such file or directory")

    def open_prebuilt(self, path: Path) -> None:
        """Search a prebuilt index directory as the pool (only pyserini can)."""
        raise ValueError(
            f"retriever.corpus={path} is a directory; the {self.backend} back end needs a .jsonl file "
            "(a prebuilt Lucene index works with retriever=pyserini)"
        )

    def index(self, docs: Iterable[tuple[str, str]]) -> None:
        """Build the index over ``docs`` (streamed once), or load it from the cache when the same
        corpus was indexed with the same ``index_settings()`` before."""
        entry = self._cache.open(docs, self.index_settings(), self._build, show_progress=self.show_progress)
        self.close()
        self.index_path, self.index_reused = entry.path, entry.reused
        self.store = DocStore(entry.corpus)
        self._open(entry.path)

    def index_settings(self) -> dict:
        """What the built index depends on besides the corpus (its cache key): settings, versions, format."""
        raise NotImplementedError(f"the {self.backend} back end does not build its own index")

    def _build(self, staging: Path, corpus: SpooledCorpus) -> None:
        """Write the index of ``corpus`` (spooled to ``staging / DOCS``) into ``staging``."""
        raise NotImplementedError(f"the {self.backend} back end does not build its own index")

    def _open(self, path: Path) -> None:
        """Load the index built in ``path`` (an empty corpus leaves nothing to load)."""
        raise NotImplementedError(f"the {self.backend} back end does not build its own index")

    @abstractmethod
    def search_rows(
        self, queries: Sequence[str], k: int, *, progress: bool | None = None
    ) -> list[list[tuple[int, float]]]:
        """Batch search: per query, at most ``k`` (pool row, score) pairs, best first, ties by row."""

    def search_ranked(self, queries: Sequence[str], k: int) -> list[list[Candidate]]:
        """``search_rows`` with provenance: each hit's rank in this back end's list."""
        name = self.backend
        return [
            [Candidate(row, score, {name: rank}, score) for rank, (row, score) in enumerate(hits, 1)]
            for hits in self.search_rows(queries, k, progress=False)
        ]

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        """Batch search: one list of at most ``k`` hits per query, best first."""
        found = self.search_rows(queries, k)
        doc_id = self.store.doc_id if self.store is not None else None
        return [[Hit(doc_id(row), score) for row, score in hits] for hits in found]

    @abstractmethod
    def score(self, queries: Sequence[str], texts: Sequence[str]) -> list[float]:
        """BM25 score of ``texts[i]`` for ``queries[i]``, as if it were a document of the pool."""

    def close(self) -> None:
        """Release what the open index holds (the cached index stays on disk)."""
        if self.store is not None and hasattr(self.store, "close"):
            self.store.close()

    def fetch(self, doc_ids: Sequence[str]) -> dict[str, str]:
        """Stored texts by id; ids not in the index are left out."""
        self._require_index()
        return self.store.fetch(doc_ids)

    def _require_index(self) -> None:
        if self.store is None:
            raise RuntimeError("call index(docs) before search() or fetch()")


class BM25Retriever(Retriever):
    """A BM25 back end: the pool settings plus the analyzer's language, ``k1`` and ``b``."""

    settings: BM25Settings

    @property
    def language(self) -> str:
        return self.settings.language

    @property
    def k1(self) -> float:
        return float(self.settings.k1)

    @property
    def b(self) -> float:
        return float(self.settings.b)


def sort_hits(rows: Iterable[int], scores: Iterable[float]) -> list[tuple[int, float]]:
    """(row, score) pairs with score > 0, best first, ties by row (the pool's order)."""
    return sorted(((r, s) for r, s in zip(rows, scores) if s > 0), key=lambda hit: (-hit[1], hit[0]))


# --- small helpers shared by the back ends -------------------------------------------


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
