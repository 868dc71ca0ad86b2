"""ReasonDistill: the teacher reasons over the positive shuffled among its hard negatives."""

from rare.errors import RowError
from rare.llm.client import LLMClient
from rare.operators.llm_step import LLMRowOperator
from rare.prompts import as_template


class ReasonDistill(LLMRowOperator):
    """Reads `text`, `question`, `scenario`, `hard_negatives`; writes `reasoning` and `positive_index`.

    The positive and the negatives are shuffled with a seed derived from (run seed, step,
    row id) and shown as numbered documents; `positive_index` (1-based) records where the
    positive landed, so the same config always shows the teacher the same order.

    Args:
        llm: the teacher LLM client (`${llm}`).
        prompt: template with `system` and `user`, filled with `documents` (a list of
            {number, text}), `question` and `scenario`.
        allow_truncated: keep answers cut off at max_tokens (finish_reason=length) instead of
            failing the row.
    """

    input_roles = ("text", "question", "scenario", "hard_negatives")
    output_roles = ("reasoning", "positive_index")

    def __init__(self, llm: LLMClient, prompt: dict, allow_truncated: bool = False, inputs=None, outputs=None):
        super().__init__(llm, inputs, outputs)
        self.prompt = as_template(prompt, {"documents", "question", "scenario"}, "reason_distill")
        self.allow_truncated = bool(allow_truncated)

    def shuffled_documents(self, row: dict) -> tuple[list[dict], int]:
        """The numbered documents in this row's seeded order, and the positive's number."""
        negatives = row.get(self.inputs["hard_negatives"]) or []
        texts = [self.value(row, "text"), *negatives]
        order = list(range(len(texts)))
        self.rng(row["id"]).shuffle(order)
        documents = [{"number": number, "text": texts[source]} for number, source in enumerate(order, 1)]
        return documents, order.index(0) + 1

    def messages(self, row: dict) -> list[dict]:
        """The request for `row`: the documents in its seeded order, the scenario and question."""
        documents, _ = self.shuffled_documents(row)
        return self.prompt.render(
            documents=documents, question=self.value(row, "question"), scenario=self.value(row, "scenario")
        )

    async def process(self, row: dict) -> dict:
        _, positive_index = self.shuffled_documents(row)
        answer = await self.llm.complete(self.messages(row))
        if not answer.text.strip():
            raise RowError("the teacher returned an empty answer")
        if answer.finish_reason == "length" and not self.allow_truncated:
            raise RowError(
                "the reasoning was cut off at max_tokens (finish_reason=length); raise llm.params.max_tokens "
                "or set allow_truncated=true on this step"
            )
        return {"reasoning": answer.text.strip(), "positive_index": positive_index}
