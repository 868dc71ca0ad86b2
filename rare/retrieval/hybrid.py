"""Hybrid retrieval: a BM25 list and a dense list fused by reciprocal rank fusion.

Both back ends index the same pool: BM25 first (it spools and caches ``docs.jsonl``), then
the dense back end reads the pool back from BM25's ``docs.jsonl``, so pool rows are the same
in both. Per question each back end returns its top ``depth``; a document's fused score is
``sum(weight / (k + rank))`` over the lists that hold it (rank 1 = best), and the fused list
is sorted by it (ties by row). Each hit keeps its rank in each list (``Candidate.ranks``) and
its BM25 score, which the score-margin guard compares (a document only the dense list found
has none and is left to the dense guards).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rare.retrieval.base import Candidate, Retriever, check_search_args
from rare.retrieval.dense import DenseRetriever
from rare.retrieval.pool import read_corpus
from rare.retrieval.settings import PoolSettings, takes_settings


@takes_settings(PoolSettings)
class HybridRetriever(Retriever):
    """BM25 + dense, fused by reciprocal rank fusion.

    Args:
        bm25: the lexical back end (pyserini, bm25s or gensim).
        dense: the dense back end.
        k: the RRF constant (60 in the original paper; smaller favours the top ranks).
        weights: ``{"bm25": w, "dense": w}``, each list's weight in the fusion.
        depth: hits taken from each list before fusing (at least the k asked for).
        **settings: `PoolSettings`; its corpus (a .jsonl file) is the pool of both back ends.
    """

    backend = "hybrid"

    def __init__(
        self,
        bm25: Retriever,
        dense: DenseRetriever,
        k: float = 60,
        weights: dict | None = None,
        depth: int = 100,
        **settings,
    ) -> None:
        super().__init__(PoolSettings(**settings))
        self.language = getattr(bm25, "language", "en")
        if float(k) <= 0 or int(depth) < 1:
            raise ValueError(f"hybrid k must be > 0 and depth >= 1, got k={k}, depth={depth}")
        weights = dict(weights or {})
        unknown = set(weights) - {"bm25", "dense"}
        if unknown:
            raise ValueError(f"hybrid weights take the keys bm25 and dense, got {sorted(unknown)}")
        self.bm25, self.dense = bm25, dense
        self.k = float(k)
        self.weights = {"bm25": float(weights.get("bm25", 1.0)), "dense": float(weights.get("dense", 1.0))}
        self.depth = int(depth)

    def check(self) -> None:
        self.bm25.check()
        self.dense.check()

    def warm_up(self) -> None:
        self.bm25.warm_up()

    def index(self, docs: Iterable[tuple[str, str]]) -> None:
        self.bm25.index(docs)
        self.store = self.bm25.store
        self.dense.index(read_corpus(self.store.path))
        self.index_path, self.index_reused = (
            self.bm25.index_path,
            bool(self.bm25.index_reused and self.dense.index_reused),
        )
        if len(self.dense.store) != len(self.store):
            raise RuntimeError("hybrid: the BM25 and dense pools differ in size; clear the index cache")

    def search_ranked(self, queries: Sequence[str], k: int) -> list[list[Candidate]]:
        k = check_search_args(queries, k)
        self._require_index()
        if k == 0:
            return [[] for _ in queries]
        depth = max(k, self.depth)
        lexical = self.bm25.search_rows(queries, depth, progress=False)
        semantic = self.dense.search_rows(queries, depth, progress=False)
        return [self._fuse(a, b)[:k] for a, b in zip(lexical, semantic)]

    def _fuse(self, lexical: list[tuple[int, float]], semantic: list[tuple[int, float]]) -> list[Candidate]:
        found: dict[int, Candidate] = {}
        for name, hits in (("bm25", lexical), ("dense", semantic)):
            weight = self.weights[name]
            for rank, (row, score) in enumerate(hits, 1):
                hit = found.get(row)
                if hit is None:
                    hit = found[row] = Candidate(row, 0.0, {}, None)
                hit.ranks[name] = rank
                hit.score += weight / (self.k + rank)
                if name == "bm25":
                    hit.margin_score = score
        fused = sorted(found.values(), key=lambda c: (-c.score, c.row))
        for hit in fused:
            hit.score = round(hit.score, 6)
        return fused

    def search_rows(
        self, queries: Sequence[str], k: int, *, progress: bool | None = None
    ) -> list[list[tuple[int, float]]]:
        return [[(c.row, c.score) for c in hits] for hits in self.search_ranked(queries, k)]

    def score(self, queries: Sequence[str], texts: Sequence[str]) -> list[float]:
        """The BM25 score (what the score-margin guard compares)."""
        return self.bm25.score(queries, texts)

    # the dense guards use the dense back end's vectors
    def encode_queries(self, queries: Sequence[str]):
        return self.dense.encode_queries(queries)

    def row_vectors(self, rows: Sequence[int]):
        return self.dense.row_vectors(rows)

    def text_vectors(self, texts: Sequence[str]):
        return self.dense.text_vectors(texts)
