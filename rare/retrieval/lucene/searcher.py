"""Searching one Lucene index: BM25 bag-of-words queries built as pyserini's ``LuceneSearcher``
builds them (same analyzer, same query, so the same scores), run through Lucene's
``IndexSearcher.search(query, k)``; the top k come back as one JSON string per query (one pyjnius
call) rather than one Java object per hit. Usable from several Python threads: pyjnius releases
the GIL while Lucene searches."""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from rare.retrieval.base import sort_hits
from rare.retrieval.lucene.java import import_lucene

log = logging.getLogger(__name__)

FIELD = "contents"  # the field Anserini indexes the text into
MAX_CLAUSES = 1 << 16  # distinct query terms Lucene accepts (its default is 1024)


def run_threads(target, count: int) -> None:
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


class LuceneIndex:
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
                lucene = lucene_query(query)
                # Lucene breaks ties by document number, which a multi-threaded build assigns in no fixed
                # order: the documents tied at the cut are all fetched, then ordered by pool row
                asked = k + 1
                while len(top := json.loads(write(search(lucene, asked)))["scoreDocs"]) == asked:
                    if top[-1]["score"] < top[k - 1]["score"]:
                        break
                    asked *= 4
            except Exception as exc:  # noqa: BLE001 - a query Lucene rejects gets no hits, the others go on
                log.warning("BM25 query %d failed in Lucene, no hits for it: %s", position, str(exc).splitlines()[0])
                return []
            if not top:
                return []
            docs = [hit["doc"] for hit in top]
            scores = np.asarray([hit["score"] for hit in top], dtype=np.float32).tolist()  # Lucene's float32
            return sort_hits(docs if rows is None else rows[docs].tolist(), scores)[:k]

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


def _allow_long_queries() -> None:
    """Raise Lucene's 1024-clause limit, so queries with many distinct terms still run."""
    from jnius import autoclass

    searcher_class = autoclass("org.apache.lucene.search.IndexSearcher")
    if searcher_class.getMaxClauseCount() < MAX_CLAUSES:
        searcher_class.setMaxClauseCount(MAX_CLAUSES)
