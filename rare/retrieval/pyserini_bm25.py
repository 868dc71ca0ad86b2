"""BM25 over a Lucene index built with pyserini (the default back end).

Build: Anserini's multi-threaded ``SimpleIndexer`` (behind pyserini's ``LuceneIndexer``)
indexes ``docs.jsonl`` without storing the documents (``-storeRaw`` would make every hit
load its document). Texts stay in ``docs.jsonl`` and are read by byte offset
(:class:`~rare.retrieval.cache.DocStore`); ``rows.npy`` maps Lucene's internal document
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
import math
import os
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from rare.retrieval import dedup
from rare.retrieval.base import BM25Retriever, check_search_args, sort_hits
from rare.retrieval.cache import DOCS, SpooledCorpus, package_version
from rare.retrieval.java import check_java, import_lucene, start_java
from rare.retrieval.settings import BM25Settings, takes_settings
from rare.retrieval.textio import clean_text, progress_bar

log = logging.getLogger(__name__)

LUCENE_DIR = "lucene"  # the Lucene index, inside the cached index directory
ROWS = "rows.npy"  # int32 row of docs.jsonl per Lucene document number
FIELD = "contents"  # the field Anserini indexes the text into
MAX_CLAUSES = 1 << 16  # distinct query terms Lucene accepts (its default is 1024)
SEARCH_CHUNK = 64  # queries a search thread takes at a time
INDEX_BUFFER_MB = 256  # Lucene's indexing RAM buffer (Anserini's default is 4 GB)
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
        self._lucene: _Lucene | None = None

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
            self._lucene = _Lucene(path / LUCENE_DIR, self.language, self.k1, self.b, rows, self.max_query_terms)

    def _build(self, staging: Path, corpus: SpooledCorpus) -> None:
        if not len(corpus):
            return
        lucene = import_lucene()
        index_dir = staging / LUCENE_DIR
        # no -storeRaw: texts stay in docs.jsonl; a bounded RAM buffer keeps the JVM heap small
        args = ["-index", str(index_dir), "-language", self.language, "-memoryBuffer", str(INDEX_BUFFER_MB)]
        indexer = lucene.SimpleIndexer(
            [*args, "-input", "", "-collection", "JsonCollection", "-threads", str(self.threads)]
        )
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
                        added += indexer.addRawDocuments(batch)
                        bar.update(len(batch))
                        batch = []
                if batch:
                    added += indexer.addRawDocuments(batch)
                    bar.update(len(batch))
        finally:
            indexer.close()
        if added < len(corpus):  # Lucene skips documents with blank text; they can never match
            log.info("Lucene skipped %d of %d documents with blank text", len(corpus) - added, len(corpus))
        if added:
            np.save(staging / ROWS, _row_map(index_dir, corpus.rows, show_progress=self.show_progress))

    def open_prebuilt(self, path: Path) -> None:
        """Search the Lucene index at ``path`` (built elsewhere) as the pool; nothing is cached."""
        import_lucene()
        self.close()
        if not (path / "segments_1").exists() and not any(path.glob("segments_*")):
            raise ValueError(f"retriever.corpus={path}: not a Lucene index (no segments_* file)")
        lucene = _Lucene(path, self.language, self.k1, self.b, rows=None, max_query_terms=self.max_query_terms)
        self.store = _LuceneStore(lucene, path)
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

            _run_threads(work, min(self.threads, -(-len(queries) // SEARCH_CHUNK)))
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


def _run_threads(target, count: int) -> None:
    """Run ``target`` in ``count`` threads, the calling thread one of them; re-raise the first error.

    The extra threads attach to the JVM on their first call and detach when done.
    """
    errors: list[BaseException] = []

    def guarded(extra: bool) -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread below
            errors.append(exc)
        finally:
            if extra:
                from jnius import detach

                detach()

    threads = [threading.Thread(target=guarded, args=(True,), daemon=True) for _ in range(count - 1)]
    for thread in threads:
        thread.start()
    guarded(False)
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


class _Lucene:
    """A Lucene reader + BM25 searcher over one index directory, usable from several threads."""

    def __init__(
        self,
        path: Path,
        language: str,
        k1: float,
        b: float,
        rows: np.ndarray | None,
        max_query_terms: int | None = None,
    ) -> None:
        lucene = import_lucene()  # first: importing jnius starts a JVM
        from jnius import autoclass, cast

        _allow_long_queries()
        self.java = SimpleNamespace(
            Term=autoclass("org.apache.lucene.index.Term"),
            SmallFloat=autoclass("org.apache.lucene.util.SmallFloat"),
            AnalyzerUtils=autoclass("io.anserini.analysis.AnalyzerUtils"),
            TermQuery=autoclass("org.apache.lucene.search.TermQuery"),
            BoostQuery=autoclass("org.apache.lucene.search.BoostQuery"),
            BooleanQueryBuilder=autoclass("org.apache.lucene.search.BooleanQuery$Builder"),
            SHOULD=autoclass("org.apache.lucene.search.BooleanClause$Occur").SHOULD,
        )
        self.anserini = lucene.SimpleSearcher(str(path))  # Anserini's analyzer choice for `language`, as at indexing
        self.anserini.set_language(language)
        self.analyzer = self.anserini.get_analyzer()
        directory = autoclass("org.apache.lucene.store.FSDirectory").open(autoclass("java.io.File")(str(path)).toPath())
        self.reader = autoclass("org.apache.lucene.index.DirectoryReader").open(directory)
        self.searcher = autoclass("org.apache.lucene.search.IndexSearcher")(
            cast("org.apache.lucene.index.IndexReader", self.reader)
        )
        self.searcher.setSimilarity(autoclass("org.apache.lucene.search.similarities.BM25Similarity")(k1, b))
        self.generator = autoclass("io.anserini.search.query.BagOfWordsQueryGenerator")()
        self.json = autoclass("com.fasterxml.jackson.databind.ObjectMapper")()
        self.k1, self.b = k1, b
        self.num_docs = int(self.reader.numDocs())
        self.rows = rows
        self.max_query_terms = max_query_terms
        self._doc_freqs: dict[str, int] = {}  # analyzed term -> document frequency (only with max_query_terms)
        self._query_lock = threading.Lock()
        self._stats = None

    def thread_searcher(self):
        """A function (query, k, position) -> [(row, score)] for one thread."""
        build, search, write = self.generator.buildQuery, self.searcher.search, self.json.writeValueAsString
        analyzer, rows = self.analyzer, self.rows

        def lucene_query(query: str):
            if self.max_query_terms is None:
                return build(FIELD, analyzer, query)
            # pyjnius binds a method to its receiver on the shared method object, so calls on
            # different Java objects (lists, terms, builders) from several threads can cross
            with self._query_lock:
                return self.terms_query(self.query_terms(query))

        def run(query: str, k: int, position: int) -> list[tuple[int, float]]:
            try:
                top = json.loads(write(search(lucene_query(query), k)))["scoreDocs"]
            except Exception as exc:  # noqa: BLE001 - a query Lucene rejects gets no hits, the others go on
                log.warning("BM25 query %d failed in Lucene, no hits for it: %s", position, str(exc).splitlines()[0])
                return []
            if not top:
                return []
            docs = [hit["doc"] for hit in top]
            scores = np.asarray([hit["score"] for hit in top], dtype=np.float32).tolist()  # Lucene's float32
            return sort_hits(docs if rows is None else rows[docs].tolist(), scores)

        return run

    # -- scoring a text that may not be in the index -----------------------------------

    def analyze(self, text: str) -> list[str]:
        return list(self.java.AnalyzerUtils.analyze(self.analyzer, text).toArray())

    def doc_freq(self, term: str) -> int:
        found = self._doc_freqs.get(term)
        if found is None:
            found = self._doc_freqs[term] = int(self.reader.docFreq(self.java.Term(FIELD, term)))
        return found

    def query_terms(self, query: str) -> Counter:
        """The query's analyzed terms with their counts; with max_query_terms, only the rarest
        ones in the index (ties: first in the query). Terms no document has cannot match and go."""
        terms = Counter(self.analyze(query))
        if self.max_query_terms is None or len(terms) <= self.max_query_terms:
            return terms
        order = {term: i for i, term in enumerate(terms)}
        present = [term for term in terms if self.doc_freq(term) > 0]
        kept = sorted(present, key=lambda term: (self.doc_freq(term), order[term]))[: self.max_query_terms]
        return Counter({term: terms[term] for term in kept})

    def terms_query(self, terms: Counter):
        """Lucene's bag-of-words query over `terms` (each a SHOULD clause boosted by its count)."""
        java, builder = self.java, self.java.BooleanQueryBuilder()
        for term, count in terms.items():
            clause = java.TermQuery(java.Term(FIELD, term))
            builder.add(clause if count == 1 else java.BoostQuery(clause, float(count)), java.SHOULD)
        return builder.build()

    def score(self, query: str, text: str) -> float:
        """Lucene 9's BM25 formula in float32, as if ``text`` were a document of the index."""
        if self._stats is None:
            doc_count = int(self.reader.getDocCount(FIELD))
            total = int(self.reader.getSumTotalTermFreq(FIELD))
            avgdl = np.float32(total / doc_count) if doc_count else np.float32(1)
            self._stats = (doc_count, avgdl)
        doc_count, avgdl = self._stats
        query_terms = self.query_terms(query)
        tokens = self.analyze(text)
        counts = Counter(tokens)
        length = float(self.java.SmallFloat.byte4ToInt(self.java.SmallFloat.intToByte4(len(tokens))))
        k1, b = np.float32(self.k1), np.float32(self.b)
        norm_inverse = np.float32(1) / (k1 * ((np.float32(1) - b) + b * np.float32(length) / avgdl))
        total = 0.0
        for term, boost in query_terms.items():
            freq = counts.get(term)
            if not freq:
                continue
            df = max(1, int(self.reader.docFreq(self.java.Term(FIELD, term))))
            idf = np.float32(math.log(1 + (max(doc_count, df) - df + 0.5) / (df + 0.5)))
            weight = np.float32(boost) * idf
            total += float(weight - weight / (np.float32(1) + np.float32(freq) * norm_inverse))
        return float(np.float32(total))

    def close(self) -> None:
        self.anserini.close()
        self.reader.close()


class _LuceneStore:
    """The documents of a prebuilt Lucene index, by Lucene document number (its rows)."""

    def __init__(self, lucene: _Lucene, path: Path) -> None:
        from jnius import autoclass

        self._lucene = lucene
        self._utils = autoclass("io.anserini.index.IndexReaderUtils")
        self._features: dict[int, tuple[int, np.ndarray]] = {}
        if lucene.num_docs and self.texts([0])[0] is None:
            raise ValueError(
                f"retriever.corpus={path}: the index stores no document texts (build it "
                "with -storeRaw or -storeContents), or give a .jsonl pool instead"
            )

    def __len__(self) -> int:
        return self._lucene.num_docs

    def doc_id(self, row: int) -> str:
        return str(self._lucene.reader.storedFields().document(int(row)).get("id"))

    def row_of(self, doc_id: str) -> int | None:
        row = int(self._utils.convertDocidToLuceneDocid(self._lucene.reader, doc_id))
        return row if row >= 0 else None

    def texts(self, rows: Sequence[int]) -> list[str]:
        stored = self._lucene.reader.storedFields()
        out = []
        for row in rows:
            document = stored.document(int(row))
            raw, contents = document.get("raw"), document.get(FIELD)
            if raw is not None:
                try:
                    raw = json.loads(raw).get("contents", raw)
                except (ValueError, AttributeError):
                    pass
            out.append(raw if raw is not None else contents)
        return out

    def _feature(self, row: int) -> tuple[int, np.ndarray]:
        if row not in self._features:
            if len(self._features) > 100_000:
                self._features.clear()
            keys, sketches = dedup.features(self.texts([row]))
            self._features[row] = (int(keys[0]), sketches[0])
        return self._features[row]

    def key(self, row: int) -> int:
        return self._feature(row)[0]

    def sketch(self, row: int) -> np.ndarray:
        return self._feature(row)[1]

    def keys_of(self, rows: Sequence[int]) -> list[int]:
        return [self.key(row) for row in rows]

    def sketches_of(self, rows: Sequence[int]) -> np.ndarray:
        return np.stack([self.sketch(row) for row in rows]) if len(rows) else np.zeros((0, dedup.SKETCH), np.uint32)

    def fetch(self, doc_ids: Sequence[str]) -> dict[str, str]:
        wanted = {d: self.row_of(d) for d in dict.fromkeys(doc_ids) if isinstance(d, str)}
        wanted = {d: r for d, r in wanted.items() if r is not None}
        return dict(zip(wanted, self.texts(list(wanted.values()))))


def _row_map(index_dir: Path, rows: dict[str, int], *, show_progress: bool) -> np.ndarray:
    """For each Lucene document number, the row of ``docs.jsonl`` it was built from (-1: none).

    The ids come from the ``id`` doc values Anserini writes beside the stored field: on 5,000
    documents 0.05 s where paging a match-all search and loading each stored document took
    0.2-0.4 s (cold classes and JIT, in the step). A segment without them is read from its
    stored fields.
    """
    from jnius import autoclass

    directory = autoclass("org.apache.lucene.store.FSDirectory").open(
        autoclass("java.io.File")(str(index_dir)).toPath()
    )
    reader = autoclass("org.apache.lucene.index.DirectoryReader").open(directory)
    no_more = autoclass("org.apache.lucene.search.DocIdSetIterator").NO_MORE_DOCS
    try:
        out = np.full(int(reader.maxDoc()), -1, dtype=np.int32)
        with progress_bar(enabled=show_progress, desc="Lucene row map", total=len(out), unit="doc") as bar:
            for leaf in reader.leaves().toArray():
                base, segment = int(leaf.docBase), leaf.reader()
                ids = segment.getBinaryDocValues("id")
                if ids is None:
                    stored = segment.storedFields()
                    for doc in range(int(segment.maxDoc())):
                        out[base + doc] = rows[str(stored.document(doc).get("id"))]
                else:
                    doc = ids.nextDoc()
                    while doc != no_more:
                        out[base + doc] = rows[ids.binaryValue().utf8ToString()]
                        doc = ids.nextDoc()
                bar.update(int(segment.maxDoc()))
        return out
    finally:
        reader.close()


def _allow_long_queries() -> None:
    """Raise Lucene's 1024-clause limit, so queries with many distinct terms still run."""
    from jnius import autoclass

    searcher_class = autoclass("org.apache.lucene.search.IndexSearcher")
    if searcher_class.getMaxClauseCount() < MAX_CLAUSES:
        searcher_class.setMaxClauseCount(MAX_CLAUSES)
