"""ReasonDistill: the teacher reasons over the positive shuffled among its hard negatives."""

import random
import re
from collections.abc import Mapping

from rare.llm.client import LLMClient
from rare.operators.llm_step import LLMRowOperator
from rare.operators.prompts import as_template

# A line that opens the final answer: "Answer:", "Final answer:", "**Final Answer:**", "## Answer:" ...
_ANSWER = re.compile(r"^[ \t>#*_-]*(?:final[ \t]+)?answer[ \t*_]*[:：]", re.IGNORECASE | re.MULTILINE)


def final_answer(reasoning: str) -> str | None:
    """The text after the last answer marker line ("Answer:" / "Final answer:"), or None without one."""
    markers = list(_ANSWER.finditer(reasoning or ""))
    if not markers:
        return None
    answer = reasoning[markers[-1].end() :].strip().strip("*_").strip()
    return answer or None


def shuffled_documents(row: Mapping, inputs: Mapping[str, str], rng: random.Random) -> tuple[list[dict], int]:
    """The positive (`inputs["text"]`) and its negatives (`inputs["hard_negatives"]`) as numbered
    documents in the order `rng` shuffles them to, and the positive's number (1-based). Each
    document's `source` is 0 for the positive, k for the k-th negative.

    With `rng` = the row's generator (run seed, step name, row id) this is the order the teacher saw.
    """
    texts = [row[inputs["text"]], *(row.get(inputs["hard_negatives"]) or [])]
    order = list(range(len(texts)))
    rng.shuffle(order)
    documents = [{"number": number, "text": texts[source], "source": source} for number, source in enumerate(order, 1)]
    return documents, order.index(0) + 1


class ReasonDistill(LLMRowOperator):
    """Reads `text`, `question`, `scenario`, `hard_negatives`; writes `reasoning` (the teacher's
    full text), `answer` (its final answer, after the last "Answer:" line; None without one),
    `positive_index`, `shown_document_ids` (the ids of the documents in the order it showed them:
    the positive's `source_id` or row id, the negatives' `hard_negative_ids`) and `documents_truncated`.

    The positive and the negatives are shuffled with a seed derived from (run seed, step,
    row id) and shown as numbered documents; `positive_index` (1-based) records where the
    positive landed, so the same config always shows the teacher the same order.

    Args:
        llm: the teacher LLM client (`${llm}`).
        prompt: template with `system` and `user`, filled with `documents` (a list of
            {number, text}), `question` and `scenario`.
        allow_truncated: keep answers cut off at max_tokens (finish_reason=length) instead of
            failing the row.
        max_document_tokens: each shown document is cut to this many tokens (how many were cut
            is recorded in `documents_truncated`); None = an equal share of what the context leaves.
    """

    input_roles = ("text", "question", "scenario", "hard_negatives", "hard_negative_ids", "source_id")
    optional_inputs = ("hard_negative_ids", "source_id")  # only name the shown documents
    output_roles = ("reasoning", "answer", "positive_index", "shown_document_ids", "documents_truncated")
    truncated_role = "documents_truncated"

    def __init__(
        self,
        llm: LLMClient,
        prompt: dict,
        allow_truncated: bool = False,
        inputs=None,
        outputs=None,
        max_document_tokens: int | None = None,
    ):
        super().__init__(llm, inputs, outputs, max_document_tokens)
        self.prompt = as_template(prompt, {"documents", "question", "scenario"}, "reason_distill")
        self.allow_truncated = bool(allow_truncated)

    def shuffled_documents(self, row: dict) -> tuple[list[dict], int]:
        """The numbered documents in this row's seeded order, and the positive's number."""
        self.value(row, "text")
        return shuffled_documents(row, self.inputs, self.rng(row["id"]))

    def shown(self, row: dict) -> list[dict]:
        """The numbered documents as the prompt shows them: in the row's order, each cut to the budget."""
        documents, _ = self.shuffled_documents(row)
        texts = self.fit_documents([document["text"] for document in documents])
        return [{**document, "text": text} for document, text in zip(documents, texts)]

    def render(self, row: dict) -> list[dict]:
        """The documents in the row's seeded order, the scenario and the question."""
        return self.fill(
            documents=self.shown(row), question=self.value(row, "question"), scenario=self.value(row, "scenario")
        )

    def parse(self, text: str, row: dict) -> dict:
        """The teacher's text, its final answer and where the positive was shown."""
        documents, positive = self.shuffled_documents(row)
        return {
            "reasoning": text,
            "answer": final_answer(text),
            "positive_index": positive,
            "shown_document_ids": self.shown_ids(row, documents),
        }

    def shown_ids(self, row: dict, documents: list[dict]) -> list:
        """The ids of `documents` (as `shuffled_documents` gives them), in the order shown; None where unknown."""
        negatives = row.get(self.inputs["hard_negatives"]) or []
        ids = [
            row.get(self.inputs["source_id"]) or row["id"],
            *(row.get(self.inputs["hard_negative_ids"]) or [None] * len(negatives)),
        ]
        return [ids[document["source"]] if document["source"] < len(ids) else None for document in documents]
