"""QAReasonDistill: the teacher reasons over a labelled question's retrieved documents and ends
with its choice in `<answer>` tags (the RARE paper's recipe)."""

from rare.llm.client import LLMClient
from rare.operators.answers import extract_choice
from rare.operators.prompts import as_template
from rare.operators.reason_distill import ReasonDistill


class QAReasonDistill(ReasonDistill):
    """Reads `question`, `options` ({letter: text} or None for an open question) and `documents`
    (texts, best first); writes `reasoning` (the teacher's whole text, `<answer>` tag included),
    `answer` (the choice read from it: a letter, or free text for an open question; None when
    it states none) and `documents_truncated`.

    Args:
        llm: the teacher LLM client.
        prompt: template with `system` and `user`, filled with `documents` (a list of {number,
            text}, in retrieval order), `question` and `options` (a mapping, or None).
        use_documents: show the documents; false asks the question alone (closed book, as
            `rare eval` does to measure what retrieval adds).
        allow_truncated: keep answers cut off at max_tokens instead of failing the row.
        max_document_tokens: each shown document is cut to this many tokens; None = an equal
            share of what the context leaves.
    """

    input_roles = ("question", "options", "documents")
    output_roles = ("reasoning", "answer", "documents_truncated")

    def __init__(
        self,
        llm: LLMClient,
        prompt: dict,
        use_documents: bool = True,
        allow_truncated: bool = False,
        inputs=None,
        outputs=None,
        max_document_tokens: int | None = None,
    ):
        super().__init__(llm, {"system": "", "user": ""}, allow_truncated, inputs, outputs, max_document_tokens)
        self.prompt = as_template(prompt, {"documents", "question", "options"}, "reason_distill (qa)")
        self.use_documents = bool(use_documents)
        if not self.use_documents:  # closed book: the documents column is not needed
            self.inputs = {role: column for role, column in self.inputs.items() if role != "documents"}

    def shuffled_documents(self, row: dict) -> tuple[list[dict], None]:
        """The numbered documents the teacher sees, in retrieval order (nothing is shuffled here)."""
        texts = (row.get(self.inputs["documents"]) or []) if self.use_documents else []
        return [{"number": number, "text": text} for number, text in enumerate(texts, 1)], None

    def render(self, row: dict) -> list[dict]:
        """The documents in retrieval order, the question and its options (None for an open question)."""
        options = row.get(self.inputs["options"]) or None
        return self.fill(documents=self.shown(row), question=self.value(row, "question"), options=options)

    def parse(self, text: str, row: dict) -> dict:
        """The teacher's whole text and the choice read from its `<answer>` tag."""
        return {"reasoning": text, "answer": extract_choice(text, row.get(self.inputs["options"]) or None)}
