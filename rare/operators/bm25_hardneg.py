"""BM25HardNeg: documents that BM25 ranks high for the question but that are not the positive."""

import hashlib
import re

from rare.errors import RowError
from rare.operator import CorpusOperator
from rare.retrieval.base import Retriever

_SPACE = re.compile(r"\s+")


def text_key(text: str) -> str:
    """Hash of the case- and whitespace-normalized text: equal keys are exact duplicates."""
    return hashlib.sha1(_SPACE.sub(" ", text).strip().lower().encode("utf-8")).hexdigest()


class BM25HardNeg(CorpusOperator):
    """Reads `question` and `text`; writes `hard_negatives` (texts), `hard_negative_ids`, `hard_negative_scores`.

    The whole dataset is indexed once (cached by content hash); questions are searched in
    batches. The positive itself, exact duplicates of it and repeats are never negatives.

    Args:
        retriever: the BM25 back end (`${retriever}`).
        num_negatives: negatives per row.
        skip_top: candidates to ignore after the positive is removed (unlabeled positives hide there).
        extra_candidates: how many more hits than needed to fetch, to survive the exclusions.
        batch_size: questions per batch search.
    """

    input_roles = ("question", "text")
    output_roles = ("hard_negatives", "hard_negative_ids", "hard_negative_scores")

    def __init__(
        self,
        retriever: Retriever,
        num_negatives: int = 3,
        skip_top: int = 0,
        extra_candidates: int = 10,
        batch_size: int = 1000,
        inputs=None,
        outputs=None,
    ):
        super().__init__(inputs, outputs)
        if int(num_negatives) < 1:
            raise ValueError(f"num_negatives must be at least 1, got {num_negatives}")
        self.retriever = retriever
        self.num_negatives = int(num_negatives)
        self.skip_top = int(skip_top)
        self.extra_candidates = int(extra_candidates)
        self.batch_size = int(batch_size)

    def check(self) -> list[str]:
        try:
            self.retriever.check()
        except RuntimeError as error:
            return [str(error)]
        return []

    def prepare(self, rows) -> None:
        text_column = self.inputs["text"]
        self.retriever.index((row["id"], row[text_column]) for row in rows if row.get(text_column))

    def process_batch(self, rows: list[dict]) -> list[dict | RowError]:
        questions, searchable = [], []
        results: list[dict | RowError] = [RowError("not searched")] * len(rows)
        for position, row in enumerate(rows):
            try:
                questions.append(self.value(row, "question"))
                searchable.append(position)
            except RowError as error:
                results[position] = error
        depth = self.num_negatives + self.skip_top + self.extra_candidates + 1
        rankings = self.retriever.search(questions, depth) if questions else []
        texts = self.retriever.fetch(sorted({hit.doc_id for hits in rankings for hit in hits}))
        for position, hits in zip(searchable, rankings):
            results[position] = self._choose(rows[position], hits, texts)
        return results

    def _choose(self, row: dict, hits, texts: dict[str, str]) -> dict:
        seen = {text_key(row[self.inputs["text"]])}
        candidates = []
        for hit in hits:
            text = texts.get(hit.doc_id)
            if hit.doc_id == row["id"] or text is None:
                continue
            key = text_key(text)
            if key in seen:
                continue
            seen.add(key)
            candidates.append((hit, text))
        chosen = candidates[self.skip_top : self.skip_top + self.num_negatives]
        return {
            "hard_negatives": [text for _, text in chosen],
            "hard_negative_ids": [hit.doc_id for hit, _ in chosen],
            "hard_negative_scores": [round(hit.score, 4) for hit, _ in chosen],
        }
