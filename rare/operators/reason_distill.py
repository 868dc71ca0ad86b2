"""ReasonDistill: the teacher reasons over the positive shuffled among its hard negatives."""

import random
import re
from collections.abc import Mapping

from rare.llm.client import LLMClient
from rare.llm.content import LENGTH, UnusableAnswer
from rare.operators.llm_step import LLMRowOperator
from rare.prompts import as_template

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
    documents in the order `rng` shuffles them to, and the positive's number (1-based).

    With `rng` = the row's generator (run seed, step name, row id) this is the order the teacher saw.
    """
    texts = [row[inputs["text"]], *(row.get(inputs["hard_negatives"]) or [])]
    order = list(range(len(texts)))
    rng.shuffle(order)
    documents = [{"number": number, "text": texts[source]} for number, source in enumerate(order, 1)]
    return documents, order.index(0) + 1


class ReasonDistill(LLMRowOperator):
    """Reads `text`, `question`, `scenario`, `hard_negatives`; writes `reasoning` (the teacher's
    full text), `answer` (its final answer, after the last "Answer:" line; None without one),
    `positive_index` and `documents_truncated`.

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

    input_roles = ("text", "question", "scenario", "hard_negatives")
    output_roles = ("reasoning", "answer", "positive_index", "documents_truncated")

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

    def messages(self, row: dict) -> list[dict]:
        """The request for `row`: the documents in its seeded order, the scenario and question."""
        return self._request(row)[0]

    def _request(self, row: dict) -> tuple[list[dict], int]:
        """The request for `row`, each document cut to the token budget; and how many were cut."""
        documents, _ = self.shuffled_documents(row)
        texts, cut = self.fit_documents([document["text"] for document in documents])
        documents = [{**document, "text": text} for document, text in zip(documents, texts)]
        messages = self.prompt.render(
            documents=documents, question=self.value(row, "question"), scenario=self.value(row, "scenario")
        )
        return messages, cut

    async def process(self, row: dict) -> dict:
        return await self.reason(row)

    async def reason(self, row: dict, params: dict | None = None) -> dict:
        """One reasoning path for `row` (fields by role); `params` override the sampling
        parameters (verify and answer_check sample more paths with other seeds)."""
        messages, truncated = self._request(row)
        try:
            answer = await self.llm.complete(messages, params=params, allow_cut=self.allow_truncated)
        except UnusableAnswer as error:
            if error.failure_kind != LENGTH:
                raise
            hint = f"{error}, or set steps.{self.name}.allow_truncated=true"
            raise UnusableAnswer(hint, LENGTH, error.text, error.reason) from None
        return self.fields(row, answer.text.strip(), truncated)

    def fields(self, row: dict, reasoning: str, truncated: int) -> dict:
        """The step's fields (by role) for the teacher's text `reasoning` about `row`."""
        return {
            "reasoning": reasoning,
            "answer": final_answer(reasoning),
            "positive_index": self.shuffled_documents(row)[1],
            "documents_truncated": truncated,
        }
