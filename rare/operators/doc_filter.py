"""DocFilter: drop documents before any LLM call: too short, too long, exact and near duplicates."""

from collections.abc import Iterable
from itertools import islice

import numpy as np

from rare.errors import ConfigError, RowError, RowFiltered
from rare.pipeline.step_contract import CorpusOperator
from rare.retrieval.dedup import features, shingles, words

CHUNK = 256  # documents hashed together (the exact-duplicate keys are vectorized)


def _bound(name: str, value) -> int | None:
    if value is None:
        return None
    if int(value) < 0:
        raise ConfigError(f"{name} must be >= 0 or null, got {value}")
    return int(value)


class DocFilter(CorpusOperator):
    """Reads `text`; writes nothing. Documents outside the length bounds, exact duplicates of an
    earlier document and near-duplicates of an earlier kept one are removed before any call.

    Removed rows never reach later steps; each is listed in `dropped.jsonl` beside
    `failed.jsonl` with its reason (`too_short`, `too_long`, `exact_duplicate`,
    `near_duplicate`, then the details) and counted as `filtered` in the manifest and the
    summary: a decision, not a failure. The first document of a duplicate group (input order)
    is the one kept.

    Words are the tokens of `rare.retrieval.dedup` (runs of letters and digits; every CJK
    character is one), so bounds in words work for Chinese text too.

    Args:
        min_chars, max_chars: length bounds in characters (null = no bound).
        min_words, max_words: length bounds in words (null = no bound).
        exact_duplicates: drop documents with the same words as an earlier one (case,
            whitespace and punctuation ignored).
        near_duplicate_threshold: drop documents whose estimated Jaccard similarity of word
            5-gram shingles with an earlier kept document reaches this (MinHash LSH from
            `datasketch`); null turns it off.
        num_perm: MinHash permutations (more: a finer estimate, more memory).
    """

    input_roles = ("text",)
    output_roles = ()
    placement = "first"  # removes rows: before the steps that would pay for them
    keeps_documents = True  # what it leaves is the documents: the pool a `pool = "documents"` step indexes

    def __init__(
        self,
        min_chars: int | None = None,
        max_chars: int | None = None,
        min_words: int | None = None,
        max_words: int | None = None,
        exact_duplicates: bool = True,
        near_duplicate_threshold: float | None = 0.8,
        num_perm: int = 128,
        batch_size: int = 1000,
        inputs=None,
        outputs=None,
    ):
        super().__init__(inputs, outputs)
        self.bounds = {
            name: _bound(name, value)
            for name, value in (
                ("min_chars", min_chars),
                ("max_chars", max_chars),
                ("min_words", min_words),
                ("max_words", max_words),
            )
        }
        for unit in ("chars", "words"):
            low, high = self.bounds[f"min_{unit}"], self.bounds[f"max_{unit}"]
            if low is not None and high is not None and low > high:
                raise ConfigError(f"min_{unit}={low} is above max_{unit}={high}; no document could pass")
        if near_duplicate_threshold is not None and not 0 < float(near_duplicate_threshold) <= 1:
            raise ConfigError(f"near_duplicate_threshold must be in (0, 1] or null, got {near_duplicate_threshold}")
        self.exact_duplicates = bool(exact_duplicates)
        self.threshold = None if near_duplicate_threshold is None else float(near_duplicate_threshold)
        self.num_perm = int(num_perm)
        self.batch_size = int(batch_size)
        if self.threshold is not None:
            try:
                import datasketch  # noqa: F401
            except ImportError as error:
                raise ConfigError(
                    "near-duplicate removal needs datasketch; `pip install datasketch==2.0.0`, "
                    "or set steps.doc_filter.near_duplicate_threshold=null"
                ) from error
        self.reasons: dict[str, str] = {}  # row id -> why it is removed

    def prepare(self, rows: Iterable[dict]) -> None:
        """Decide every document once, in input order (the first of a duplicate group is kept)."""
        self.reasons = {}
        first_of: dict[int, str] = {}  # exact-duplicate key -> id of the first document with it
        lsh, kept = self._near_index(), {}
        column, stream = self.inputs["text"], iter(rows)
        while chunk := list(islice(stream, CHUNK)):
            texts = [row.get(column) or "" for row in chunk]
            keys = features(texts)[0].tolist() if self.exact_duplicates else [None] * len(chunk)
            for row, text, key in zip(chunk, texts, keys):
                reason = self._length_reason(text)
                if reason is None and key is not None:
                    if key in first_of:
                        reason = f"exact_duplicate: the same words as {first_of[key]}"
                    else:
                        first_of[key] = row["id"]
                if reason is None and lsh is not None:
                    reason = self._near_reason(row["id"], text, lsh, kept)
                if reason is not None:
                    self.reasons[row["id"]] = reason

    def process_batch(self, rows: list[dict]) -> list[dict | RowError]:
        return [RowFiltered(self.reasons[row["id"]]) if row["id"] in self.reasons else {} for row in rows]

    def _length_reason(self, text: str) -> str | None:
        sizes = {"chars": len(text)}
        if self.bounds["min_words"] is not None or self.bounds["max_words"] is not None:
            sizes["words"] = len(words(text))
        for unit, size in sizes.items():
            low, high = self.bounds[f"min_{unit}"], self.bounds[f"max_{unit}"]
            if low is not None and size < low:
                return f"too_short: {size} {unit} < min_{unit}={low}"
            if high is not None and size > high:
                return f"too_long: {size} {unit} > max_{unit}={high}"
        return None

    def _near_index(self):
        if self.threshold is None:
            return None
        from datasketch import MinHashLSH

        return MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)

    def _near_reason(self, row_id: str, text: str, lsh, kept: dict) -> str | None:
        """Drop `text` when a kept document's estimated Jaccard reaches the threshold, else keep it."""
        from datasketch import MinHash

        sketch = MinHash(num_perm=self.num_perm)
        sketch.update_batch([b" ".join(shingle) for shingle in shingles(text)])
        best, similarity = None, 0.0
        for candidate in lsh.query(sketch):  # LSH candidates; their estimate is checked
            estimate = float(np.count_nonzero(kept[candidate] == sketch.hashvalues)) / self.num_perm
            if estimate > similarity:
                best, similarity = candidate, estimate
        if best is not None and similarity >= self.threshold:
            return f"near_duplicate: ~{similarity:.2f} Jaccard with {best} (threshold {self.threshold})"
        lsh.insert(row_id, sketch)
        kept[row_id] = sketch.hashvalues
        return None
