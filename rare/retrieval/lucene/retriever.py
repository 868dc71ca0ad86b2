"""BM25 over a Lucene index built with pyserini (the default back end).

Build: Anserini's multi-threaded ``SimpleIndexer`` (behind pyserini's ``LuceneIndexer``)
indexes ``docs.jsonl`` without storing the documents (``-storeRaw`` would make every hit
load its document). Texts stay in ``docs.jsonl`` and are read by byte offset
(:class:`~rare.retrieval.pool.DocStore`); ``rows.npy`` maps Lucene's internal document
numbers to rows of ``docs.jsonl``. The whole directory is cached by corpus content and
analyzer settings.

Search: each query becomes the bag-of-words BM25 query pyserini's ``LuceneSearcher``
builds (same analyzer, same query, so the same scores) and runs through Lucene's
``IndexSearcher.search(query, k)``, which skips documents that cannot reach the top k.
pyserini's ``batch_search`` instead ranks every match by score and then id and loads each
hit's stored document, several times slower. The top k come back as one JSON string per
query (one pyjnius call) rather than one Java object per hit. Queries are spread over
``threads`` Python threads: pyjnius releases the GIL while Lucene searches.

``corpus`` may name a prebuilt Lucene index instead (any index with an ``id`` field and
stored ``raw`` or ``contents``); its documents are then the pool.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rare.retrieval.base import BM25Retriever, check_search_args
from rare.retrieval.index_cache import package_version
from rare.retrieval.lucene.indexing import LUCENE_DIR, ROWS, build_lucene_index
from rare.retrieval.lucene.java import check_java, import_lucene, start_java
from rare.retrieval.lucene.prebuilt import PrebuiltStore
from rare.retrieval.lucene.searcher import LuceneIndex, run_threads
from rare.retrieval.pool import SpooledCorpus
from rare.retrieval.settings import BM25Settings, takes_settings
from rare.retrieval.textio import clean_text, progress_bar

log = logging.getLogger(__name__)

SEARCH_CHUNK = 64  # queries a search thread takes at a time
FORMAT = 2  # bump when the on-disk layout changes, so old caches are not reused


@takes_settings(BM25Settings)
class PyseriniRetriever(BM25Retriever):
    """BM25 with Lucene (via pyserini) over a cached index.

    Args:
        threads: indexing and search threads (None: all cores).
        batch_size: documents per indexing call, queries per progress step.
        max_query_terms: search with only the query's rarest analyzed terms (highest idf, as
            Lucene's MoreLikeThis picks them); None = every term. Long questions over millions of
            documents spend most of the search in the long posting lists of common terms, which
            add little to the ranking. Scores (and the margin guard) use the same terms.
        **settings: `BM25Settings` (language: the Lucene analyzer; k1 and b, applied at search
            time, so not part of the cache key; cache_dir; show_progress; corpus: a ``.jsonl``
            file or a prebuilt Lucene index directory searched instead of the documents given to
            ``prepare``).

    ``index_path`` is the index directory last opened; ``index_reused`` tells whether it
    came from the cache (nothing was built).
    """

    backend = "pyserini"

    def __init__(
        self, threads: int | None = None, batch_size: int = 1000, max_query_terms: int | None = None, **settings
    ) -> None:
        super().__init__(BM25Settings(**settings))
        if max_query_terms is not None and int(max_query_terms) < 1:
            raise ValueError(f"max_query_terms must be at least 1 or null, got {max_query_terms}")
        self.max_query_terms = None if max_query_terms is None else int(max_query_terms)
        self.threads = max(1, int(threads or os.cpu_count() or 1))
        self.batch_size = max(1, int(batch_size))
        self.num_docs = 0
        self.store = None
        self._lucene: LuceneIndex | None = None

    def check(self) -> None:
        check_java()

    def warm_up(self) -> None:
        start_java()

    # -- indexing ---------------------------------------------------------------------

    def index_settings(self) -> dict:
        # k1 and b are applied at search time, so they are not part of the key
        return {"language": self.language, "pyserini": package_version("pyserini"), "format": FORMAT}

    def _open(self, path: Path) -> None:
        self.num_docs = len(self.store)
        if (path / LUCENE_DIR).is_dir():
            rows = np.asarray(np.load(path / ROWS, mmap_mode="r"))
            self._lucene = LuceneIndex(path / LUCENE_DIR, self.language, self.k1, self.b, rows, self.max_query_terms)

    def _build(self, staging: Path, corpus: SpooledCorpus) -> None:
        build_lucene_index(staging, corpus, self.language, self.threads, self.batch_size, self.show_progress)

    def open_prebuilt(self, path: Path) -> None:
        """Search the Lucene index at ``path`` (built elsewhere) as the pool; nothing is cached."""
        import_lucene()
        self.close()
        if not (path / "segments_1").exists() and not any(path.glob("segments_*")):
            raise ValueError(f"retriever.corpus={path}: not a Lucene index (no segments_* file)")
        lucene = LuceneIndex(path, self.language, self.k1, self.b, rows=None, max_query_terms=self.max_query_terms)
        self.store = PrebuiltStore(lucene, path)
        self._lucene = lucene
        self.index_path, self.index_reused, self.num_docs = path, True, lucene.num_docs

    def ranking_key(self) -> str | None:
        if self.index_path is None or self.index_path.parent != self.cache_root:
            return None  # a prebuilt index may change under the same path
        settings = {
            "k1": self.k1,
            "b": self.b,
            "max_query_terms": self.max_query_terms,
            "pyserini": package_version("pyserini"),
        }
        return json.dumps([self.backend, self.index_path.name, settings], sort_keys=True)

    # -- searching ----------------------------------------------------------------------

    def search_rows(
        self, queries: Sequence[str], k: int, *, progress: bool | None = None
    ) -> list[list[tuple[int, float]]]:
        k = check_search_args(queries, k)
        self._require_index()
        results: list[list[tuple[int, float]]] = [[] for _ in queries]
        if self._lucene is None or k == 0 or not len(queries):
            return results
        k = min(k, self._lucene.num_docs)
        show = self.show_progress if progress is None else progress
        with progress_bar(enabled=show, desc="BM25 search", total=len(queries), unit="query") as bar:
            lock = threading.Lock()
            positions = iter(range(len(queries)))

            def work() -> None:
                search = self._lucene.thread_searcher()
                while True:
                    with lock:
                        chunk = [p for _, p in zip(range(SEARCH_CHUNK), positions)]
                    if not chunk:
                        return
                    for position in chunk:
                        results[position] = search(clean_text(queries[position]), k, position)
                    with lock:
                        bar.update(len(chunk))

            run_threads(work, min(self.threads, -(-len(queries) // SEARCH_CHUNK)))
        return results

    def score(self, queries: Sequence[str], texts: Sequence[str]) -> list[float]:
        """Lucene's BM25 for each (query, text), with the pool's statistics (df at least 1)."""
        self._require_index()
        if self._lucene is None:
            return [0.0] * len(queries)
        return [self._lucene.score(clean_text(q), clean_text(t)) for q, t in zip(queries, texts)]

    def close(self) -> None:
        """Release the Lucene reader (the cached index stays on disk)."""
        if self._lucene is not None:
            self._lucene.close()
            self._lucene = None
        super().close()

    def _require_index(self) -> None:
        if self.index_path is None:
            raise RuntimeError("call index(docs) before search() or fetch()")
