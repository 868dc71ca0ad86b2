"""Positive-aware exclusions: which ranked candidates may be hard negatives. One place, every back end.

Candidates (``base.Candidate``, best first) are checked in this order; the first rule that
fires drops the candidate and counts it under its reason in ``hard_negative_info.dropped``:

* ``positive``: the row's own document (by pool row);
* ``duplicate``: the same words as the positive or as an earlier candidate (``dedup.text_key``);
* ``margin``: ``margin_score`` above ``(1 - score_margin)`` x the positive's (the back end's own
  score: BM25 for BM25 and hybrid, the cosine for dense);
* ``near_duplicate``: shingle Jaccard with the positive >= ``near_duplicate_threshold`` (MinHash
  sketches rule most pairs out; the rest are checked exactly);
* ``relative_margin``: dense similarity to the question above ``relative_margin`` x the
  positive's own (NV-Retriever's TopK-PercPos: a candidate closer to the question than 95% of
  the positive is probably an unlabeled positive);
* ``similar_to_positive``: dense cosine with the positive document above
  ``max_similarity_to_positive`` (a paraphrase, a second copy with other words).

Of the survivors the first ``skip_top`` are counted as ``skipped`` and the next
``num_negatives`` kept. The dense checks need vectors: a dense or hybrid retriever has them for
every pool row; a BM25 back end gets them from an :class:`~rare.retrieval.embed.Encoder`
(``TextVectors``: only the candidates that pass the cheap checks are embedded, a window at a time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rare.retrieval import dedup
from rare.retrieval.base import Candidate

DROPPED = (
    "positive",
    "duplicate",
    "margin",
    "near_duplicate",
    "relative_margin",
    "similar_to_positive",
    "skipped",
)  # the counts in hard_negative_info.dropped
DENSE_WINDOW = 8  # extra candidates per row whose vectors are fetched beyond the ones still needed


@dataclass
class Positive:
    """What the exclusions compare candidates with: the row's own document."""

    text: str
    row: int | None  # its row in the pool (None: not in the pool, e.g. an external corpus)
    key: int
    sketch: np.ndarray
    score: float | None = None  # its margin score for the question
    shingles: set | None = None
    vector: np.ndarray | None = None
    question_similarity: float | None = None  # cosine of the question and the positive


class TextVectors:
    """Vectors for the dense checks with a BM25 back end: pool texts embedded on demand (and remembered)."""

    def __init__(self, encoder, store) -> None:
        self.encoder, self.store = encoder, store
        self._rows: dict[int, np.ndarray] = {}
        self._queries: dict[str, np.ndarray] = {}  # the current batch's questions

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        missing = [q for q in dict.fromkeys(queries) if q not in self._queries]
        if missing:
            if len(self._queries) > 10_000:
                self._queries.clear()
            self._queries.update(zip(missing, self.encoder.encode(missing)))
        return np.stack([self._queries[q] for q in queries])

    def text_vectors(self, texts: Sequence[str]) -> np.ndarray:
        return self.encoder.encode(list(texts))

    def row_vectors(self, rows: Sequence[int]) -> np.ndarray:
        missing = [r for r in dict.fromkeys(rows) if r not in self._rows]
        if missing:
            if len(self._rows) > 200_000:
                self._rows.clear()
            self._rows.update(zip(missing, self.encoder.encode(self.store.texts(missing))))
        return np.stack([self._rows[r] for r in rows])


class Exclusions:
    """The guard settings and the choice of negatives from ranked candidates (see the module doc)."""

    def __init__(
        self,
        num_negatives: int,
        skip_top: int = 0,
        score_margin: float | None = None,
        near_duplicate_threshold: float | None = None,
        relative_margin: float | None = None,
        max_similarity_to_positive: float | None = None,
        vectors=None,
    ) -> None:
        self.num_negatives, self.skip_top = num_negatives, skip_top
        self.score_margin = score_margin
        self.near_duplicate_threshold = near_duplicate_threshold
        self.vectors = vectors if (relative_margin is not None or max_similarity_to_positive is not None) else None
        self.relative_margin = relative_margin if self.vectors is not None else None
        self.max_similarity_to_positive = max_similarity_to_positive if self.vectors is not None else None

    @property
    def dense(self) -> bool:
        return self.vectors is not None

    # -- the positives ------------------------------------------------------------------

    def positives(self, retriever, rows: dict[int, tuple[str, str]]) -> dict[int, Positive]:
        """The positive of each row ((id, text) by position in the batch)."""
        store = retriever.store
        out: dict[int, Positive] = {}
        missing: list[int] = []
        for position, (row_id, text) in rows.items():
            pool_row = None if retriever.external else store.row_of(row_id)
            if pool_row is not None:
                out[position] = Positive(text, pool_row, store.key(pool_row), store.sketch(pool_row))
            else:
                missing.append(position)
        if missing:  # not in the pool: compute its features here
            keys, sketches = dedup.features([rows[p][1] for p in missing])
            for position, key, sketch in zip(missing, keys.tolist(), sketches):
                out[position] = Positive(rows[position][1], None, key, sketch)
        return out

    def score_positives(self, retriever, questions: dict[int, str], rankings, positives: dict[int, Positive]) -> None:
        """The positive's margin score (from its own hit, else computed) and its dense similarity to the question."""
        unscored = []
        for position, hits in zip(questions, rankings):
            positive = positives[position]
            for hit in hits:
                if hit.row == positive.row and hit.margin_score is not None:
                    positive.score = hit.margin_score
                    break
            else:
                if positive.score is None and self.score_margin is not None:
                    unscored.append(position)
        if unscored:
            scores = retriever.score([questions[p] for p in unscored], [positives[p].text for p in unscored])
            for position, score in zip(unscored, scores):
                positives[position].score = score
        if self.dense:
            todo = [p for p in questions if positives[p].vector is None]
            if todo:
                in_pool = [p for p in todo if positives[p].row is not None]
                outside = [p for p in todo if positives[p].row is None]
                if in_pool:
                    for p, v in zip(in_pool, self.vectors.row_vectors([positives[p].row for p in in_pool])):
                        positives[p].vector = v
                if outside:
                    for p, v in zip(outside, self.vectors.text_vectors([positives[p].text for p in outside])):
                        positives[p].vector = v
                q = self.vectors.encode_queries([questions[p] for p in todo])
                for p, v in zip(todo, q):
                    positives[p].question_similarity = float(v @ positives[p].vector)

    # -- choosing -------------------------------------------------------------------------

    def choose(self, retriever, questions: dict[int, str], rankings: list[list[Candidate]], positives) -> list[dict]:
        """Per row (in ``questions`` order), the chosen candidates and the drop counts."""
        self.score_positives(retriever, questions, rankings, positives)
        store = retriever.store
        flat = [hit.row for hits in rankings for hit in hits]
        counts = [len(hits) for hits in rankings]
        bounds = np.concatenate([[0], np.cumsum(counts)]).astype(int).tolist()
        keys = store.keys_of(flat)
        similar = None
        if self.near_duplicate_threshold is not None and flat:
            sketches = np.stack([positives[p].sketch for p in questions])
            similar = dedup.estimates(store.sketches_of(flat), np.repeat(sketches, counts, axis=0)).tolist()
        survivors, dropped = [], []
        for i, (position, hits) in enumerate(zip(questions, rankings)):
            lo, hi = bounds[i], bounds[i + 1]
            row_similar = None if similar is None else similar[lo:hi]
            kept, counts_i = self._cheap(positives[position], hits, keys[lo:hi], row_similar, store)
            survivors.append(kept)
            dropped.append(counts_i)
        if self.dense:
            survivors = self._dense(questions, survivors, positives, dropped)
        results = []
        for kept, counts_i in zip(survivors, dropped):
            kept = kept[: self.skip_top + self.num_negatives]
            chosen = kept[self.skip_top :]
            counts_i["skipped"] = len(kept) - len(chosen)
            results.append({"chosen": chosen, "dropped": counts_i})
        return results

    def _cheap(self, positive: Positive, hits: list[Candidate], keys: list[int], similar, store):
        """Every candidate past the positive, duplicate, margin and near-duplicate checks, in rank order."""
        dropped = dict.fromkeys(DROPPED, 0)
        ceiling = np.inf
        if self.score_margin is not None and positive.score is not None:
            ceiling = (1.0 - self.score_margin) * positive.score
        sketch_floor = None if similar is None else self.near_duplicate_threshold - dedup.SKETCH_SLACK
        limit = None if self.dense else self.skip_top + self.num_negatives  # the dense checks may drop more
        seen = {positive.key}
        kept: list[Candidate] = []
        for i, hit in enumerate(hits):
            if hit.row == positive.row:
                dropped["positive"] += 1
                continue
            if keys[i] in seen:  # the positive's words again, or an earlier candidate's
                dropped["duplicate"] += 1
                continue
            if hit.margin_score is not None and hit.margin_score > ceiling:
                dropped["margin"] += 1
                continue
            if (
                sketch_floor is not None
                and similar[i] >= sketch_floor
                and self._near_duplicate(positive, hit.row, store)
            ):
                dropped["near_duplicate"] += 1
                continue
            seen.add(keys[i])
            kept.append(hit)
            if limit is not None and len(kept) == limit:
                break
        return kept, dropped

    def _dense(
        self, questions: dict[int, str], survivors: list[list[Candidate]], positives, dropped
    ) -> list[list[Candidate]]:
        """The dense checks over each row's survivors, fetching vectors a window at a time."""
        need = self.skip_top + self.num_negatives
        order = list(questions)
        kept: list[list[Candidate]] = [[] for _ in survivors]
        start = [0] * len(survivors)
        while True:
            todo = [i for i, s in enumerate(survivors) if len(kept[i]) < need and start[i] < len(s)]
            if not todo:
                break
            windows = {i: survivors[i][start[i] : start[i] + need - len(kept[i]) + DENSE_WINDOW] for i in todo}
            flat = [hit.row for i in todo for hit in windows[i]]
            vectors = self.vectors.row_vectors(flat)
            question_vectors = self.vectors.encode_queries([questions[order[i]] for i in todo])
            offset = 0
            for i, question_vector in zip(todo, question_vectors):
                positive = positives[order[i]]
                window = windows[i]
                block = vectors[offset : offset + len(window)]
                offset += len(window)
                to_question = block @ question_vector
                to_positive = block @ positive.vector
                for hit, q_sim, p_sim in zip(window, to_question.tolist(), to_positive.tolist()):
                    if len(kept[i]) == need:
                        break
                    start[i] += 1
                    if (
                        self.relative_margin is not None
                        and positive.question_similarity is not None
                        and (q_sim > self.relative_margin * positive.question_similarity)
                    ):
                        dropped[i]["relative_margin"] += 1
                    elif self.max_similarity_to_positive is not None and p_sim > self.max_similarity_to_positive:
                        dropped[i]["similar_to_positive"] += 1
                    else:
                        kept[i].append(hit)
        return kept

    def _near_duplicate(self, positive: Positive, row: int, store) -> bool:
        """The exact check, for pairs the sketches could not rule out: Jaccard of shingles >= threshold."""
        if positive.shingles is None:
            positive.shingles = dedup.shingles(positive.text)
        candidate = dedup.shingles(store.texts([row])[0])
        return dedup.jaccard(positive.shingles, candidate) >= self.near_duplicate_threshold
