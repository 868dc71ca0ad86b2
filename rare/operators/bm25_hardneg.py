"""BM25HardNeg: documents the retriever (BM25, dense or hybrid) ranks high for the question but that are not the positive."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from rare.errors import RowError
from rare.pipeline.step_contract import CorpusOperator
from rare.retrieval.base import Retriever
from rare.retrieval.exclusions import Exclusions, TextVectors
from rare.retrieval.mined import MinedCache, mining_code, source_digest

log = logging.getLogger(__name__)

MAX_DEPTH = 1000  # deepest search for a row still short of negatives after its exclusions


class BM25HardNeg(CorpusOperator):
    """Reads `question`, `text` and, when the row has it, `source_id`; writes `hard_negatives` (texts,
    best BM25 first), `hard_negative_ids`, `hard_negative_scores` and `hard_negative_info` (flags,
    counts and the options used).

    The pool is the input documents (`pool = "documents"`: step 0, or what doc_filter kept), each
    once, whatever became of its questions; or `retriever.corpus`, an external pool. It is indexed
    once, cached by content hash; questions are searched in batches. A row's positive is its
    source document (`source_id`, else the row's own id): the rows doc2query writes for one
    document share it. Candidates are taken best first through the
    exclusions of :mod:`rare.retrieval.exclusions` (the same for every back end): the
    positive itself, exact and near duplicates of it, the score margin, and the dense
    guards (`relative_margin`, `max_similarity_to_positive`). Of the rest the first
    `skip_top` are skipped and the next `num_negatives` kept. A row with fewer is kept as
    it is and flagged `short`, never padded. What each row got is kept (:mod:`rare.retrieval.mined`)
    under its question, positive, pool, options and the mining code, so a rerun searches nothing.

    Args:
        retriever: the BM25 back end (`${retriever}`); its `corpus` names an external pool.
        num_negatives: negatives per row.
        skip_top: candidates to skip after the exclusions (unlabeled positives hide there).
        score_margin: drop candidates scoring above (1 - margin) x the positive's score;
            None turns the guard off.
        near_duplicate_threshold: drop candidates whose shingle Jaccard with the positive
            reaches this; None turns the check off.
        relative_margin: drop candidates whose dense similarity to the question exceeds this
            share of the positive's own (0.95 = NV-Retriever's TopK-PercPos); None = off.
        max_similarity_to_positive: drop candidates whose dense cosine with the positive
            exceeds this; None = off.
        similarity_model: the model the dense guards embed with when the retriever has no
            vectors (BM25 back ends): None = dense guards off there, "default" = the bundled
            all-MiniLM-L6-v2, or a model directory. Dense and hybrid use their own vectors.
        extra_candidates: how many more hits than needed to fetch, to survive the exclusions
            (a row still short is searched again deeper, up to MAX_DEPTH hits).
        batch_size: questions per batch search.
    """

    input_roles = ("question", "text", "source_id")
    optional_inputs = ("source_id",)  # rows without it are their own document
    pool = "documents"
    pool_roles = ("text",)  # the documents are indexed by their text
    output_roles = ("hard_negatives", "hard_negative_ids", "hard_negative_scores", "hard_negative_info")

    def __init__(
        self,
        retriever: Retriever,
        num_negatives: int = 3,
        skip_top: int = 0,
        score_margin: float | None = 0.05,
        near_duplicate_threshold: float | None = 0.8,
        relative_margin: float | None = 0.95,
        max_similarity_to_positive: float | None = 0.85,
        similarity_model: str | None = None,
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
        for name, value in (
            ("relative_margin", relative_margin),
            ("max_similarity_to_positive", max_similarity_to_positive),
        ):
            if value is not None and not 0 < float(value) <= 1:
                raise ValueError(f"{name} must be in (0, 1] or null, got {value}")
        self.retriever = retriever
        if retriever.corpus:
            self.pool_roles = ()  # an external pool: the documents are not indexed
        self.relative_margin = None if relative_margin is None else float(relative_margin)
        self.max_similarity_to_positive = (
            None if max_similarity_to_positive is None else float(max_similarity_to_positive)
        )
        self.similarity_model = None if similarity_model in (None, "") else str(similarity_model)
        self._guards: Exclusions | None = None
        self._mined: MinedCache | None = None
        self._has_vectors = hasattr(retriever, "row_vectors") or self.similarity_model is not None
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
            "relative_margin": self.relative_margin if self._has_vectors else None,
            "max_similarity_to_positive": self.max_similarity_to_positive if self._has_vectors else None,
            "retriever": getattr(retriever, "backend", type(retriever).__name__),
            "pool": retriever.corpus or "documents",
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
        """Index the documents `rows` (or open `retriever.corpus`)."""
        text_column = self.inputs["text"]
        self.retriever.prepare((row["id"], row[text_column]) for row in rows if row.get(text_column))
        pool = len(self.retriever.store) if hasattr(self.retriever.store, "__len__") else None
        log.info(
            "step '%s': the pool is %s documents (%s), index %s",
            self.name,
            "?" if pool is None else pool,
            self.retriever.corpus or "the input documents",
            "reused" if self.retriever.index_reused else "built",
        )
        needed = self.skip_top + self.num_negatives + (0 if self.retriever.external else 1)  # + the positive itself
        if pool is not None and pool < needed:
            log.warning(
                "step '%s': the pool has %d documents, fewer than the %d that skip_top + num_negatives (+ the positive) "
                "need; every row is kept with fewer negatives and flagged short (hard_negative_info.short). Mine a "
                "larger pool with retriever.corpus=<jsonl>, or lower steps.%s.num_negatives",
                self.name,
                pool,
                needed,
                self.name,
            )

    def process_batch(self, rows: list[dict]) -> list[dict | RowError]:
        results: list[dict | RowError] = [RowError("not searched")] * len(rows)
        questions: dict[int, str] = {}
        for position, row in enumerate(rows):
            try:
                questions[position] = self.value(row, "question")
                self.value(row, "text")
            except RowError as error:
                results[position] = error
        text_column = self.inputs["text"]
        positives = {p: (self._source(rows[p]), rows[p][text_column]) for p in questions}
        mined_before, keys = self._mined_cache(), {}
        if mined_before is not None:
            keys = {p: mined_before.key(q, *positives[p]) for p, q in questions.items()}
            found = mined_before.get(list(keys.values()))
            for position in [p for p in questions if keys[p] in found]:
                results[position] = self._fields(found[keys[position]])
                del questions[position]
        mined = self._mine(questions, {p: positives[p] for p in questions})
        for position, result in mined.items():
            results[position] = self._fields(result)
        if mined_before is not None:
            mined_before.put({keys[p]: result for p, result in mined.items()})
        return results

    def _source(self, row: dict) -> str:
        """The id of the row's positive in the pool: its source document, or the row itself."""
        source = row.get(self.inputs["source_id"])
        return str(source) if source not in (None, "") else str(row["id"])

    def _mine(self, questions: dict[int, str], positive_rows: dict[int, tuple[str, str]]) -> dict[int, dict]:
        """Search and choose each question's negatives (positions of the batch -> mined result)."""
        if not questions:
            return {}
        exclusions = self._exclusions()
        positives = exclusions.positives(self.retriever, positive_rows)
        depth = self.num_negatives + self.skip_top + self.extra_candidates + 1
        mined: dict[int, dict] = {}
        while questions:
            rankings = self.retriever.search_ranked(list(questions.values()), depth)
            deeper: dict[int, str] = {}
            for (position, question), hits, choice in zip(
                questions.items(), rankings, exclusions.choose(self.retriever, questions, rankings, positives)
            ):
                result = self._result(positives[position], choice)
                if result["info"]["short"] and len(hits) == depth and depth < MAX_DEPTH:
                    deeper[position] = question  # the ranking was cut: more candidates may exist
                else:
                    mined[position] = result
            questions, depth = deeper, min(MAX_DEPTH, depth * 4)
        return mined

    def _mined_cache(self) -> MinedCache | None:
        """Where results mined with this pool, back end, options and code are kept (None: not cacheable)."""
        if self._mined is None:
            ranking = self.retriever.ranking_key()
            if ranking is None:
                return None
            code = source_digest(mining_code(__file__))
            settings = {
                **self.options,
                "extra_candidates": self.extra_candidates,
                "similarity_model": self.similarity_model,
            }
            self._mined = MinedCache(self.retriever.cache_root, json.dumps([ranking, settings, code], sort_keys=True))
        return self._mined

    def close(self) -> None:
        if self._mined is not None:
            self._mined.close()
            self._mined = None

    def _exclusions(self) -> Exclusions:
        if self._guards is None:
            vectors = None
            if self.relative_margin is not None or self.max_similarity_to_positive is not None:
                if hasattr(self.retriever, "row_vectors"):
                    vectors = self.retriever  # dense and hybrid: the pool's own embeddings
                elif self.similarity_model is not None:
                    from rare.retrieval.embed import Encoder

                    model = None if self.similarity_model == "default" else self.similarity_model
                    vectors = TextVectors(Encoder(model, self.retriever.cache_root), self.retriever.store)
            self._guards = Exclusions(
                self.num_negatives,
                self.skip_top,
                self.score_margin,
                self.near_duplicate_threshold,
                self.relative_margin,
                self.max_similarity_to_positive,
                vectors,
            )
        return self._guards

    def _result(self, positive, choice: dict) -> dict:
        """What was mined for one row, by pool row: kept as it is by the mined-negatives cache."""
        chosen = choice["chosen"]
        return {
            "rows": [hit.row for hit in chosen],
            "scores": [round(hit.score, 4) for hit in chosen],
            "info": {
                "short": len(chosen) < self.num_negatives,
                "positive_score": None if positive.score is None else round(positive.score, 4),
                "positive_similarity": (
                    None if positive.question_similarity is None else round(positive.question_similarity, 4)
                ),
                "negatives": [{"found_by": sorted(hit.ranks), "ranks": hit.ranks} for hit in chosen],
                "dropped": choice["dropped"],
                "options": self.options,
            },
        }

    def _fields(self, mined: dict) -> dict:
        """The row's output fields from what was mined for it."""
        store = self.retriever.store
        return {
            "hard_negatives": store.texts(mined["rows"]),
            "hard_negative_ids": [store.doc_id(row) for row in mined["rows"]],
            "hard_negative_scores": mined["scores"],
            "hard_negative_info": mined["info"],
        }
