"""BM25 the way the reference RARE operators (DataFlow's BM25 miner) compute it, with gensim.

Method, unchanged: texts are tokenized with pyserini's Lucene analyzer; a gensim
``Dictionary`` and ``LuceneBM25Model`` (k1=0.9, b=0.4 by default) weight every document;
per query, a ``SparseMatrixSimilarity`` (no normalisation) computes the dense row of
scores against all N documents, which becomes a ``{doc_id: score}`` dict sorted by score
(Python's stable sort, so ties stay in corpus order), exactly as DataFlow's ``BM25_Miner``
does. Documents with score 0 (no term in common with the query) are not returned, as in
every back end.

Search keeps the reference's per-query cost, an O(N) row plus a Python sort of N pairs,
because this back end exists to compare against and to check fidelity. Only the index
build is vectorized (document weights computed with numpy over the whole corpus instead
of one ``model[bow]`` call per document), with identical floating-point values. Prefer
``pyserini`` or ``bm25s`` for large corpora.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rare.retrieval.base import BM25Retriever, RetrieverUnavailable, check_search_args
from rare.retrieval.index_cache import package_version
from rare.retrieval.lucene.java import check_java, import_lucene, start_java
from rare.retrieval.pool import DOCS, DocStore, SpooledCorpus
from rare.retrieval.settings import BM25Settings, takes_settings
from rare.retrieval.textio import clean_text, progress_bar

FORMAT = 2  # bump when the on-disk layout changes, so old caches are not reused
PRUNE_AT = 2_000_000  # gensim Dictionary's default vocabulary cap, checked every 10k docs
FILES = {"dictionary": "dictionary.gensim", "model": "bm25.gensim", "index": "similarity.gensim"}


@takes_settings(BM25Settings)
class GensimRetriever(BM25Retriever):
    """Reference-faithful BM25 (pyserini analyzer + gensim ``LuceneBM25Model``); takes `BM25Settings`."""

    backend = "gensim"

    def __init__(self, **settings) -> None:
        super().__init__(BM25Settings(**settings))
        self.store: DocStore | None = None
        self._analyzer = None
        self._dictionary = None
        self._model = None
        self._similarity = None

    def check(self) -> None:
        _import_gensim()
        check_java()

    def warm_up(self) -> None:
        start_java()

    # -- indexing ---------------------------------------------------------------------

    def index_settings(self) -> dict:
        return {
            "language": self.language,
            "k1": self.k1,
            "b": self.b,
            "gensim": package_version("gensim"),
            "pyserini": package_version("pyserini"),
            "format": FORMAT,
        }

    def _open(self, path: Path) -> None:
        gensim = _import_gensim()
        self._dictionary = self._model = self._similarity = None
        if (path / FILES["index"]).is_file():
            self._dictionary = gensim.Dictionary.load(str(path / FILES["dictionary"]))
            self._model = gensim.LuceneBM25Model.load(str(path / FILES["model"]))
            self._similarity = gensim.SparseMatrixSimilarity.load(str(path / FILES["index"]))
            self._similarity.maintain_sparsity = False  # a dense row of N scores per query, as the reference

    def _build(self, staging: Path, corpus: SpooledCorpus) -> None:
        if not len(corpus):
            return
        gensim = _import_gensim()
        analyze = self._get_analyzer().analyze
        dictionary = gensim.Dictionary()
        indptr, term_ids, tfs = array("q", [0]), array("q"), array("q")
        pruned = False
        with progress_bar(enabled=self.show_progress, desc="gensim BM25", total=len(corpus), unit="doc") as bar:
            for row, text in enumerate(_texts(staging / DOCS)):
                # what Dictionary(corpus) does, one document at a time (add_documents)
                if row % 10000 == 0 and len(dictionary) > PRUNE_AT:
                    dictionary.filter_extremes(no_below=0, no_above=1.0, keep_n=PRUNE_AT)
                    pruned = True
                bow = dictionary.doc2bow(analyze(text), allow_update=True)
                term_ids.extend(term for term, _ in bow)
                tfs.extend(tf for _, tf in bow)
                indptr.append(len(term_ids))
                bar.update(1)
        if not len(dictionary):  # no document has a single token: nothing can ever match
            return
        if pruned:  # ids changed under earlier documents: map every document again
            indptr, term_ids, tfs = array("q", [0]), array("q"), array("q")
            for text in _texts(staging / DOCS):
                bow = dictionary.doc2bow(analyze(text))
                term_ids.extend(term for term, _ in bow)
                tfs.extend(tf for _, tf in bow)
                indptr.append(len(term_ids))
        model = gensim.LuceneBM25Model(dictionary=dictionary, k1=self.k1, b=self.b)
        matrix = bm25_matrix(model, np.asarray(indptr), np.asarray(term_ids), np.asarray(tfs), len(dictionary))
        similarity = gensim.SparseMatrixSimilarity(
            None, num_features=len(dictionary), normalize_queries=False, normalize_documents=False
        )
        similarity.index = matrix
        dictionary.save(str(staging / FILES["dictionary"]))
        model.save(str(staging / FILES["model"]))
        similarity.save(str(staging / FILES["index"]))

    def _get_analyzer(self):
        if self._analyzer is None:
            lucene = import_lucene()
            self._analyzer = lucene.Analyzer(lucene.get_lucene_analyzer(language=self.language))
        return self._analyzer

    # -- searching ----------------------------------------------------------------------

    def search_rows(
        self, queries: Sequence[str], k: int, *, progress: bool | None = None
    ) -> list[list[tuple[int, float]]]:
        k = check_search_args(queries, k)
        self._require_index()
        if self._similarity is None or k == 0:
            return [[] for _ in queries]
        analyze = self._get_analyzer().analyze
        ids, rows = self.store.ids, self.store.rows
        results: list[list[tuple[int, float]]] = []
        show = self.show_progress if progress is None else progress
        with progress_bar(enabled=show, desc="BM25 search", total=len(queries), unit="query") as bar:
            for query in queries:  # the reference, step by step: one dense row and one full sort per query
                vector = self._model[self._dictionary.doc2bow(analyze(clean_text(query)))]
                similarities = self._similarity[vector].tolist()  # N scores
                all_scores = dict(zip(ids, similarities))
                ranked = sorted(all_scores.items(), key=lambda x: x[1], reverse=True)[
                    :k
                ]  # stable: ties in corpus order
                results.append([(rows[doc_id], score) for doc_id, score in ranked if score > 0])
                bar.update(1)
        return results

    def score(self, queries: Sequence[str], texts: Sequence[str]) -> list[float]:
        """The similarity the reference would give ``texts[i]`` as an indexed document (model weights, float32)."""
        self._require_index()
        if self._similarity is None:
            return [0.0] * len(queries)
        analyze = self._get_analyzer().analyze
        out = []
        for query, text in zip(queries, texts):
            document = dict(self._model[self._dictionary.doc2bow(analyze(clean_text(text)))])
            weights = self._model[self._dictionary.doc2bow(analyze(clean_text(query)))]
            total = np.float32(0)
            for term, weight in weights:
                total += np.float32(document.get(term, 0.0)) * np.float32(weight)
            out.append(float(total))
        return out


def bm25_matrix(model, indptr: np.ndarray, term_ids: np.ndarray, tfs: np.ndarray, num_terms: int):
    """The (docs x terms) float32 CSR matrix ``SparseMatrixSimilarity(model[bows])`` would hold.

    Same float64 operations, in the same order, as ``LuceneBM25Model.get_term_weights``
    applied per document, then the same cast to float32, so the values are identical.
    """
    import scipy.sparse

    idf = np.zeros(num_terms, dtype=np.float64)
    if model.idfs:
        idf[np.fromiter(model.idfs.keys(), dtype=np.int64)] = np.fromiter(model.idfs.values(), dtype=np.float64)
    cumulative = np.concatenate([[0], np.cumsum(tfs)])
    num_tokens = cumulative[indptr[1:]] - cumulative[indptr[:-1]]  # per document
    norm = model.k1 * (1 - model.b + model.b * num_tokens / model.avgdl)  # per document
    norm_per_entry = np.repeat(norm, np.diff(indptr))
    weights = idf[term_ids] * (tfs / (tfs + norm_per_entry))
    return scipy.sparse.csr_matrix(
        (weights.astype(np.float32), term_ids.astype(np.int32), indptr),
        shape=(len(indptr) - 1, num_terms),
    )


def _texts(path: Path):
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)["contents"]


def _import_gensim():
    try:
        from gensim.corpora import Dictionary
        from gensim.models import LuceneBM25Model
        from gensim.similarities import SparseMatrixSimilarity
    except ImportError as exc:
        raise RetrieverUnavailable(
            f"gensim is not importable ({exc}): pip install gensim==4.4.0, or use retriever=pyserini"
        ) from exc
    from types import SimpleNamespace

    return SimpleNamespace(
        Dictionary=Dictionary, LuceneBM25Model=LuceneBM25Model, SparseMatrixSimilarity=SparseMatrixSimilarity
    )
