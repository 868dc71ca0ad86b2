"""BM25 over a Lucene index built and searched with pyserini (the default back end).

The index is cached under ``cache_dir`` by corpus content and analyzer settings
(see :mod:`rare.retrieval.cache`); document texts are stored in the index itself
(``-storeRaw``) and read back by id, so nothing per document stays in Python memory.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from rare.retrieval.base import Hit, Retriever, check_search_args, clean_text, progress_bar
from rare.retrieval.cache import DOCS, IndexCache, SpooledCorpus, package_version
from rare.retrieval.java import ensure_java, import_lucene

log = logging.getLogger(__name__)

LUCENE_DIR = "lucene"  # the Lucene index, inside the cached index directory
MAX_CLAUSES = 1 << 16  # distinct query terms Lucene accepts (its default is 1024)
FORMAT = 1  # bump when the on-disk layout changes, so old caches are not reused


class PyseriniRetriever(Retriever):
    """BM25 with pyserini's ``LuceneSearcher`` over a cached Lucene index.

    ``index_path`` is the index directory used by the last ``index()`` call and
    ``index_reused`` tells whether it came from the cache (nothing was built).
    """

    backend = "pyserini"

    def __init__(
        self,
        language: str = "en",
        k1: float = 0.9,
        b: float = 0.4,
        cache_dir: str | os.PathLike | None = None,
        threads: int | None = None,
        show_progress: bool = True,
        batch_size: int = 1000,
    ) -> None:
        self.language = language
        self.k1 = float(k1)
        self.b = float(b)
        self.threads = max(1, int(threads or os.cpu_count() or 1))
        self.show_progress = show_progress
        self.batch_size = max(1, int(batch_size))
        self._cache = IndexCache(cache_dir, self.backend)
        self.index_path: Path | None = None
        self.index_reused: bool | None = None
        self.num_docs = 0
        self._searcher = None

    def check(self) -> None:
        ensure_java()

    # -- indexing ---------------------------------------------------------------------

    def index(self, docs: Iterable[tuple[str, str]]) -> None:
        lucene = import_lucene()
        settings = {
            "language": self.language,
            "pyserini": package_version("pyserini"),
            "format": FORMAT,
        }  # k1 and b are applied at search time, so they are not part of the key
        entry = self._cache.open(docs, settings, self._build, show_progress=self.show_progress)
        self.close()
        self.index_path, self.index_reused, self.num_docs = entry.path, entry.reused, len(entry.corpus)
        if self.num_docs:
            _allow_long_queries()
            searcher = lucene.LuceneSearcher(str(entry.path / LUCENE_DIR))
            searcher.set_language(self.language)
            searcher.set_bm25(self.k1, self.b)
            self._searcher = searcher

    def _build(self, staging: Path, corpus: SpooledCorpus) -> None:
        if not len(corpus):
            return
        lucene = import_lucene()
        index_dir = str(staging / LUCENE_DIR)
        args = ["-index", index_dir, "-language", self.language, "-storeRaw"]
        indexer = lucene.LuceneIndexer(index_dir, args=args, threads=self.threads)
        added = 0
        try:
            with (
                open(staging / DOCS, encoding="utf-8") as fh,
                progress_bar(enabled=self.show_progress, desc="Lucene index", total=len(corpus), unit="doc") as bar,
            ):
                batch: list[str] = []
                for line in fh:
                    batch.append(line)
                    if len(batch) == self.batch_size:
                        added += indexer.object.addRawDocuments(batch)
                        bar.update(len(batch))
                        batch = []
                if batch:
                    added += indexer.object.addRawDocuments(batch)
                    bar.update(len(batch))
        finally:
            indexer.close()
        if added < len(corpus):  # Lucene skips documents with blank text; they can never match
            log.info("Lucene skipped %d of %d documents with blank text", len(corpus) - added, len(corpus))
        (staging / DOCS).unlink()  # the index stores the raw documents itself

    # -- searching ----------------------------------------------------------------------

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        k = check_search_args(queries, k)
        if self._searcher is None:
            self._require_index()
            return [[] for _ in queries]  # empty corpus
        k = min(k, self.num_docs)
        if k == 0:
            return [[] for _ in queries]
        results: list[list[Hit]] = []
        with progress_bar(enabled=self.show_progress, desc="BM25 search", total=len(queries), unit="query") as bar:
            for start in range(0, len(queries), self.batch_size):
                chunk = [clean_text(q) for q in queries[start : start + self.batch_size]]
                results.extend(self._search_chunk(chunk, k, start))
                bar.update(len(chunk))
        return results

    def _search_chunk(self, chunk: list[str], k: int, start: int) -> list[list[Hit]]:
        qids = [str(i) for i in range(len(chunk))]
        try:
            found = self._searcher.batch_search(chunk, qids, k=k, threads=self.threads)
        except Exception:  # noqa: BLE001 - one bad query fails the whole Java batch: isolate it
            return [self._search_one(query, k, start + i) for i, query in enumerate(chunk)]
        return [[Hit(str(h.docid), float(h.score)) for h in found.get(qid, ())] for qid in qids]

    def _search_one(self, query: str, k: int, position: int) -> list[Hit]:
        try:
            found = self._searcher.batch_search([query], ["0"], k=k, threads=1)
        except Exception as exc:  # noqa: BLE001
            log.warning("BM25 query %d failed in Lucene, no hits for it: %s", position, str(exc).splitlines()[0])
            return []
        return [Hit(str(h.docid), float(h.score)) for h in found.get("0", ())]

    def fetch(self, doc_ids: Sequence[str]) -> dict[str, str]:
        if self._searcher is None:
            self._require_index()
            return {}
        wanted = list(dict.fromkeys(d for d in doc_ids if isinstance(d, str)))
        found = self._searcher.batch_doc(wanted, self.threads) if wanted else {}
        return {doc_id: json.loads(found[doc_id].raw())["contents"] for doc_id in wanted if doc_id in found}

    def close(self) -> None:
        """Release the Lucene searcher (the cached index stays on disk)."""
        if self._searcher is not None:
            self._searcher.close()
            self._searcher = None

    def _require_index(self) -> None:
        if self.index_path is None:
            raise RuntimeError("call index(docs) before search() or fetch()")


def _allow_long_queries() -> None:
    """Raise Lucene's 1024-clause limit, so queries with many distinct terms still run."""
    from jnius import autoclass

    searcher_class = autoclass("org.apache.lucene.search.IndexSearcher")
    if searcher_class.getMaxClauseCount() < MAX_CLAUSES:
        searcher_class.setMaxClauseCount(MAX_CLAUSES)
