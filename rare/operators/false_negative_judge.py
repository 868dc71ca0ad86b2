"""FalseNegativeJudge: an LLM reads each row's hard negatives and drops the ones that answer the question."""

from __future__ import annotations

from rare.llm.client import LLMClient
from rare.llm.parsing import ParseError, extract_json_object
from rare.operators.llm_step import LLMRowOperator
from rare.operators.prompts import as_template

JUDGE_SCHEMA = {
    "type": "object",
    "properties": {
        "answering": {"type": "array", "items": {"type": "integer", "minimum": 1, "description": "document numbers"}},
        "rationale": {"type": "string"},
    },
    "required": ["answering", "rationale"],
    "additionalProperties": False,
}


def parse_judgement(text: str, count: int) -> list[int]:
    """The 1-based numbers of the documents the judge says answer the question (each in 1..count)."""
    numbers = extract_json_object(text).get("answering")
    if not isinstance(numbers, list) or not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
        raise ParseError(f"'answering' must be a list of document numbers, got {numbers!r}")
    outside = [n for n in numbers if not 1 <= n <= count]
    if outside:
        raise ParseError(f"'answering' names documents {outside}, but there are only documents 1 to {count}")
    return sorted(set(numbers))


class FalseNegativeJudge(LLMRowOperator):
    """Reads `question` and `hard_negatives` (+ ids, scores, info); replaces all four without the
    negatives the judge says answer the question (unlabeled positives). One call per row, all its
    negatives numbered in one prompt; a row without negatives makes no call. The drop is counted
    in `hard_negative_info.dropped.judge`, and a row left with fewer negatives is flagged short.

    Args:
        llm: the judge (`${llm}`, or a cheaper model); cache, budget and dry-run pricing are the client's.
        prompt: `system` and `user` templates, filled with `question`, `documents` ({number, text})
            and `shape` (the answer's JSON shape, read from its schema).
        max_retries: re-asks after an answer that is not the expected JSON.
        max_document_tokens: tokens each shown negative may have (None: a share of the context).
    """

    input_roles = ("question", "hard_negatives", "hard_negative_ids", "hard_negative_scores", "hard_negative_info")
    output_roles = ("hard_negatives", "hard_negative_ids", "hard_negative_scores", "hard_negative_info")
    rewrites = output_roles

    schema = JUDGE_SCHEMA
    schema_name = "false_negatives"
    stand_ins = {  # the list shapes bm25_hardneg gave (3 negatives, nothing dropped)
        "hard_negatives": [(f"hard negative {n}",) for n in range(1, 4)],
        "hard_negative_ids": [f"placeholder-{n}" for n in range(1, 4)],
        "hard_negative_scores": [0.0] * 3,
        "hard_negative_info": {"short": False},
    }

    def __init__(
        self, llm: LLMClient, prompt: dict, max_retries: int = 2, inputs=None, outputs=None, max_document_tokens=None
    ):
        super().__init__(llm, inputs, outputs, max_document_tokens)
        self.prompt = as_template(prompt, {"question", "documents", "shape"}, "false_negative_judge")
        self.max_retries = int(max_retries)

    def render(self, row: dict) -> list[dict]:
        """The question and its negatives, numbered, each cut to the token budget."""
        texts = self.fit_documents(list(self.value(row, "hard_negatives")))
        documents = [{"number": n, "text": text} for n, text in enumerate(texts, 1)]
        return self.fill(question=self.value(row, "question"), documents=documents)

    def parse(self, text: str, row: dict) -> dict:
        """The row's negatives without the ones the judge names (refusing numbers outside the list)."""
        return self.kept(row, parse_judgement(text, len(self.value(row, "hard_negatives"))))

    async def process(self, row: dict) -> dict:
        return await self.call(row) if self.value(row, "hard_negatives") else self.kept(row, [])

    def kept(self, row: dict, answering: list[int]) -> dict:
        """The four columns without the negatives numbered in `answering`, the drop counted in the info."""
        negatives = list(self.value(row, "hard_negatives"))
        ids = list(row.get(self.inputs["hard_negative_ids"]) or [None] * len(negatives))
        scores = list(row.get(self.inputs["hard_negative_scores"]) or [None] * len(negatives))
        info = dict(row.get(self.inputs["hard_negative_info"]) or {})
        keep = [i for i in range(len(negatives)) if i + 1 not in answering]
        wanted = (info.get("options") or {}).get("num_negatives", len(negatives))
        info["dropped"] = {**(info.get("dropped") or {}), "judge": len(answering)}
        info["judged_false_negatives"] = [ids[i - 1] for i in answering]
        if "negatives" in info:
            info["negatives"] = [info["negatives"][i] for i in keep if i < len(info["negatives"])]
        info["short"] = len(keep) < wanted
        return {
            "hard_negatives": [negatives[i] for i in keep],
            "hard_negative_ids": [ids[i] for i in keep],
            "hard_negative_scores": [scores[i] for i in keep],
            "hard_negative_info": info,
        }
