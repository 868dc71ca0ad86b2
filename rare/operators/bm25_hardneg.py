"""BM25HardNeg: documents that BM25 ranks high for the question but that are not the positive."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rare.errors import RowError
from rare.operator import CorpusOperator
from rare.retrieval import dedup
from rare.retrieval.base import Retriever

log = logging.getLogger(__name__)

MAX_DEPTH = 1000  # deepest search for a row still short of negatives after its exclusions
DROPPED = ("positive", "duplicate", "near_duplicate", "margin", "skipped")  # the counts in hard_negative_info


@dataclass
class _Positive:
    """What the exclusions compare candidates with: the row's own document."""

    text: str
    row: int | None  # its row in the pool (None: not in the pool, e.g. an external corpus)
    key: int
    sketch: np.ndarray
    score: float | None = None
    shingles: set | None = None


class BM25HardNeg(CorpusOperator):
    """Reads `question` and `text`; writes `hard_negatives` (texts, best BM25 first), `hard_negative_ids`,
    `hard_negative_scores` and `hard_negative_info` (flags, counts and the options used).

    The pool (the dataset, or `retriever.corpus`) is indexed once, cached by content hash;
    questions are searched in batches. Candidates are taken best first, and dropped are:
    the positive itself (by id when the pool is the dataset), exact duplicates of the
    positive or of an earlier candidate (same words), near-duplicates of the positive
    (word 5-gram Jaccard, character 5-grams for CJK), and candidates scoring above
    `(1 - score_margin)` x the positive's own BM25 score (likely unlabeled positives). Of
    the rest the first `skip_top` are skipped and the next `num_negatives` kept. A row
    with fewer is kept as it is and flagged `short`, never padded.

    Args:
        retriever: the BM25 back end (`${retriever}`); its `corpus` names an external pool.
        num_negatives: negatives per row.
        skip_top: candidates to skip after the exclusions (unlabeled positives hide there).
        score_margin: drop candidates scoring above (1 - margin) x the positive's score;
            None turns the guard off.
        near_duplicate_threshold: drop candidates whose shingle Jaccard with the positive
            reaches this; None turns the check off.
        extra_candidates: how many more hits than needed to fetch, to survive the exclusions
            (a row still short is searched again deeper, up to MAX_DEPTH hits).
        batch_size: questions per batch search.
    """

    input_roles = ("question", "text")
    output_roles = ("hard_negatives", "hard_negative_ids", "hard_negative_scores", "hard_negative_info")

    def __init__(
        self,
        retriever: Retriever,
        num_negatives: int = 3,
        skip_top: int = 0,
        score_margin: float | None = 0.05,
        near_duplicate_threshold: float | None = 0.8,
        extra_candidates: int = 10,
        batch_size: int = 1000,
        inputs=None,
        outputs=None,
    ):
        super().__init__(inputs, outputs)
        if int(num_negatives) < 1:
            raise ValueError(f"num_negatives must be at least 1, got {num_negatives}")
        if int(skip_top) < 0 or int(extra_candidates) < 0:
            raise ValueError(f"skip_top and extra_candidates must be >= 0, got {skip_top} and {extra_candidates}")
        if score_margin is not None and not 0 <= float(score_margin) < 1:
            raise ValueError(f"score_margin must be in [0, 1) or null, got {score_margin}")
        if near_duplicate_threshold is not None and not 0 < float(near_duplicate_threshold) <= 1:
            raise ValueError(f"near_duplicate_threshold must be in (0, 1] or null, got {near_duplicate_threshold}")
        self.retriever = retriever
        self.num_negatives = int(num_negatives)
        self.skip_top = int(skip_top)
        self.score_margin = None if score_margin is None else float(score_margin)
        self.near_duplicate_threshold = None if near_duplicate_threshold is None else float(near_duplicate_threshold)
        self.extra_candidates = int(extra_candidates)
        self.batch_size = int(batch_size)
        self.options = {
            "num_negatives": self.num_negatives,
            "skip_top": self.skip_top,
            "score_margin": self.score_margin,
            "near_duplicate_threshold": self.near_duplicate_threshold,
            "retriever": getattr(retriever, "backend", type(retriever).__name__),
            "pool": retriever.corpus or "dataset",
        }

    def retrievers(self) -> list[Retriever]:
        return [self.retriever]

    def check(self) -> list[str]:
        problems = []
        try:
            self.retriever.check()
        except RuntimeError as error:
            problems.append(str(error))
        if self.retriever.corpus and not Path(self.retriever.corpus).expanduser().exists():
            problems.append(f"retriever.corpus={self.retriever.corpus}: no such file or directory")
        return problems

    def open(self) -> None:
        self.retriever.warm_up()  # the JVM boots while the steps before this one run

    def dry_run_outputs(self, placeholder) -> dict:
        """Stand-ins for this step's outputs: `num_negatives` documents of a typical size (a dry run searches nothing)."""
        return {
            "hard_negatives": [placeholder(f"hard negative {n}") for n in range(1, self.num_negatives + 1)],
            "hard_negative_ids": [f"placeholder-{n}" for n in range(1, self.num_negatives + 1)],
            "hard_negative_scores": [0.0] * self.num_negatives,
            "hard_negative_info": {"short": False, "options": self.options},
        }

    def prepare(self, rows) -> None:
        text_column = self.inputs["text"]
        self.retriever.prepare((row["id"], row[text_column]) for row in rows if row.get(text_column))
        pool = len(self.retriever.store) if hasattr(self.retriever.store, "__len__") else None
        needed = self.skip_top + self.num_negatives + (0 if self.retriever.external else 1)  # + the positive itself
        if pool is not None and pool < needed:
            log.warning(
                "step '%s': the pool has %d documents, fewer than the %d that skip_top + num_negatives (+ the positive) "
                "need; every row is kept with fewer negatives and flagged short (hard_negative_info.short). Mine a "
                "larger pool with retriever.corpus=<jsonl>, or lower steps.%s.num_negatives",
                self.name, pool, needed, self.name,
            )

    def process_batch(self, rows: list[dict]) -> list[dict | RowError]:
        results: list[dict | RowError] = [RowError("not searched")] * len(rows)
        pending: list[tuple[int, str]] = []
        for position, row in enumerate(rows):
            try:
                question = self.value(row, "question")
                self.value(row, "text")
            except RowError as error:
                results[position] = error
                continue
            pending.append((position, question))
        positives = self._positives({position: rows[position] for position, _ in pending})
        depth = self.num_negatives + self.skip_top + self.extra_candidates + 1
        while pending:
            rankings = self.retriever.search_rows([q for _, q in pending], depth, progress=False)
            keys, similar = self._features(pending, rankings, positives)
            self._positive_scores(pending, rankings, keys, positives)
            deeper, deeper_positives = [], {}
            for (position, question), hits, hit_keys, hit_similar in zip(pending, rankings, keys, similar):
                positive = positives[position]
                result = self._choose(positive, hits, hit_keys, hit_similar)
                if result["hard_negative_info"]["short"] and len(hits) == depth and depth < MAX_DEPTH:
                    deeper.append((position, question))  # the ranking was cut: more candidates may exist
                    deeper_positives[position] = positive
                else:
                    results[position] = result
            pending, positives, depth = deeper, deeper_positives, min(MAX_DEPTH, depth * 4)
        return results

    # -- the positive ---------------------------------------------------------------------

    def _positives(self, rows: dict[int, dict]) -> dict[int, _Positive]:
        """The positive of each row (rows and result keyed by position in the batch)."""
        store, text_column = self.retriever.store, self.inputs["text"]
        out: dict[int, _Positive] = {}
        missing: list[int] = []
        for position, row in rows.items():
            pool_row = None if self.retriever.external else store.row_of(row["id"])
            if pool_row is not None:
                out[position] = _Positive(row[text_column], pool_row, store.key(pool_row), store.sketch(pool_row))
            else:
                missing.append(position)
        if missing:  # not in the pool: compute its features here
            keys, sketches = dedup.features([rows[p][text_column] for p in missing])
            for position, key, sketch in zip(missing, keys.tolist(), sketches):
                out[position] = _Positive(rows[position][text_column], None, key, sketch)
        return out

    def _positive_scores(self, pending, rankings, keys, positives: dict[int, _Positive]) -> None:
        """The positive's own BM25 score: from its hit when it was retrieved, else computed.

        The hit is the positive's own row, or (pool not holding it) a document with the same words.
        """
        unscored = []
        for (position, question), hits, hit_keys in zip(pending, rankings, keys):
            positive = positives[position]
            for (row, score), key in zip(hits, hit_keys):
                if row == positive.row or (positive.row is None and key == positive.key):
                    positive.score = score
                    break
            else:
                if positive.score is None and self.score_margin is not None:
                    unscored.append((position, question))
        if unscored:
            scores = self.retriever.score([q for _, q in unscored], [positives[p].text for p, _ in unscored])
            for (position, _), score in zip(unscored, scores):
                positives[position].score = score

    # -- choosing the negatives -------------------------------------------------------------

    def _features(self, pending, rankings, positives: dict[int, _Positive]):
        """Per row, the hits' exact-duplicate keys and estimated Jaccard with the positive (one numpy pass)."""
        store = self.retriever.store
        counts = [len(hits) for hits in rankings]
        flat = [row for hits in rankings for row, _ in hits]
        bounds = np.concatenate([[0], np.cumsum(counts)]).tolist()
        keys = store.keys_of(flat)
        keys = [keys[lo:hi] for lo, hi in zip(bounds, bounds[1:])]
        if self.near_duplicate_threshold is None or not flat:
            return keys, [None] * len(rankings)
        positive_sketches = np.stack([positives[position].sketch for position, _ in pending])
        similar = dedup.estimates(store.sketches_of(flat), np.repeat(positive_sketches, counts, axis=0)).tolist()
        return keys, [similar[lo:hi] for lo, hi in zip(bounds, bounds[1:])]

    def _choose(self, positive: _Positive, hits: list[tuple[int, float]], keys: list[int], similar) -> dict:
        store = self.retriever.store
        dropped = dict.fromkeys(DROPPED, 0)
        ceiling = np.inf
        if self.score_margin is not None and positive.score is not None:
            ceiling = (1.0 - self.score_margin) * positive.score
        sketch_floor = None if similar is None else self.near_duplicate_threshold - dedup.SKETCH_SLACK
        seen = {positive.key}
        kept: list[tuple[int, float]] = []
        for i, (row, score) in enumerate(hits):
            if row == positive.row:
                dropped["positive"] += 1
                continue
            if keys[i] in seen:  # the positive's words again, or an earlier candidate's
                dropped["duplicate"] += 1
                continue
            if score > ceiling:
                dropped["margin"] += 1
                continue
            if sketch_floor is not None and similar[i] >= sketch_floor and self._near_duplicate(positive, row):
                dropped["near_duplicate"] += 1
                continue
            seen.add(keys[i])
            kept.append((row, score))
            if len(kept) == self.skip_top + self.num_negatives:
                break
        chosen = kept[self.skip_top :]
        dropped["skipped"] = len(kept) - len(chosen)
        return {
            "hard_negatives": store.texts([row for row, _ in chosen]),
            "hard_negative_ids": [store.doc_id(row) for row, _ in chosen],
            "hard_negative_scores": [round(score, 4) for _, score in chosen],
            "hard_negative_info": {
                "short": len(chosen) < self.num_negatives,
                "positive_score": None if positive.score is None else round(positive.score, 4),
                "dropped": dropped,
                "options": self.options,
            },
        }

    def _near_duplicate(self, positive: _Positive, row: int) -> bool:
        """The exact check, for pairs the sketches could not rule out: Jaccard of shingles >= threshold."""
        if positive.shingles is None:
            positive.shingles = dedup.shingles(positive.text)
        candidate = dedup.shingles(self.retriever.store.texts([row])[0])
        return dedup.jaccard(positive.shingles, candidate) >= self.near_duplicate_threshold
