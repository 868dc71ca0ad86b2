"""Retrieve: the top documents of a knowledge corpus for each labelled question (the qa recipe)."""

from __future__ import annotations

from pathlib import Path

from rare.errors import RowError
from rare.pipeline.step_contract import CorpusOperator
from rare.retrieval.base import Retriever


class Retrieve(CorpusOperator):
    """Reads `question`, `options` and `context`; writes `documents` (texts, best first),
    `document_ids` and `document_scores` (BM25; None for documents the dataset shipped).

    The query is the question followed by its options' texts. The pool is `retriever.corpus`
    (a .jsonl file, or a prebuilt Lucene index with pyserini), indexed once and cached by content
    hash; any retriever back end works. A question with no hit is kept with no documents.

    Args:
        retriever: the BM25 back end (`${retriever}`); `retriever.corpus` names the knowledge corpus.
        k: documents per question.
        use_given_context: a row whose `context` has documents uses them instead of retrieval
            (ids `<row id>#context<n>`); rows without are retrieved (or fail, with no corpus).
        batch_size: questions per batch search.
    """

    input_roles = ("question", "options", "context")
    output_roles = ("documents", "document_ids", "document_scores")

    def __init__(
        self,
        retriever: Retriever,
        k: int = 5,
        use_given_context: bool = False,
        batch_size: int = 1000,
        inputs=None,
        outputs=None,
    ):
        super().__init__(inputs, outputs)
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.retriever = retriever
        self.k = int(k)
        self.use_given_context = bool(use_given_context)
        self.batch_size = int(batch_size)

    def retrievers(self) -> list[Retriever]:
        return [self.retriever]

    def check(self) -> list[str]:
        if not self.retriever.corpus:
            if self.use_given_context:
                return []
            return [
                "step 'retrieve' needs a knowledge corpus to search: set retriever.corpus=<knowledge.jsonl> "
                '({"id", "text"|"contents"} per line), or use the dataset\'s own documents with '
                "steps.retrieve.use_given_context=true"
            ]
        problems = []
        try:
            self.retriever.check()
        except RuntimeError as error:
            problems.append(str(error))
        if not Path(self.retriever.corpus).expanduser().exists():
            problems.append(f"retriever.corpus={self.retriever.corpus}: no such file or directory")
        return problems

    def open(self) -> None:
        if self.retriever.corpus:
            self.retriever.warm_up()

    def dry_run_outputs(self, placeholder) -> dict:
        """Stand-ins: `k` documents of a typical size (a dry run searches nothing)."""
        return {
            "documents": [placeholder(f"retrieved document {n}") for n in range(1, self.k + 1)],
            "document_ids": [f"placeholder-{n}" for n in range(1, self.k + 1)],
            "document_scores": [0.0] * self.k,
        }

    def prepare(self, rows) -> None:
        if self.retriever.corpus:
            self.retriever.prepare(())  # the pool is the corpus, never the questions

    def _query(self, row: dict) -> str:
        options = row.get(self.inputs["options"]) or {}
        return " ".join([self.value(row, "question"), *options.values()])

    def process_batch(self, rows: list[dict]) -> list[dict | RowError]:
        results: list[dict | RowError] = [RowError("not searched")] * len(rows)
        pending: list[tuple[int, str]] = []
        for position, row in enumerate(rows):
            try:
                query = self._query(row)
            except RowError as error:
                results[position] = error
                continue
            given = row.get(self.inputs["context"]) if self.use_given_context else None
            if given:
                results[position] = {
                    "documents": list(given),
                    "document_ids": [f"{row['id']}#context{n}" for n in range(1, len(given) + 1)],
                    "document_scores": [None] * len(given),
                }
            elif not self.retriever.corpus:
                results[position] = RowError("the row has no context and there is no retriever.corpus to retrieve from")
            else:
                pending.append((position, query))
        if pending:
            store = self.retriever.store
            rankings = self.retriever.search_rows([query for _, query in pending], self.k, progress=False)
            for (position, _), hits in zip(pending, rankings):
                results[position] = {
                    "documents": store.texts([row for row, _ in hits]),
                    "document_ids": [store.doc_id(row) for row, _ in hits],
                    "document_scores": [round(score, 4) for _, score in hits],
                }
        return results
