"""A prebuilt Lucene index as the pool (``retriever.corpus=<index dir>``): its documents by Lucene
document number, their texts from the stored ``raw`` or ``contents`` field."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rare.retrieval import dedup
from rare.retrieval.lucene.searcher import FIELD, LuceneIndex


class PrebuiltStore:
    """The documents of a prebuilt Lucene index, by Lucene document number (its rows)."""

    def __init__(self, lucene: LuceneIndex, path: Path) -> None:
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
