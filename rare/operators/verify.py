"""Verify: an LLM judge checks the teacher's final answer against the reference answer, and can
sample more reasoning paths per question to keep a verified one (rejection sampling)."""

import asyncio

from rare.llm.client import LLMClient
from rare.llm.parsing import ParseError, extract_json_object
from rare.operators.prompts import as_template
from rare.operators.reason_distill import ReasonDistill
from rare.operators.teacher_paths import TeacherPaths

VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"agrees": {"type": "boolean"}, "rationale": {"type": "string"}},
    "required": ["agrees", "rationale"],
    "additionalProperties": False,
}
_WORDS = {"true": True, "yes": True, "false": False, "no": False}
NO_ANSWER = "the teacher's reasoning has no marked final answer to compare"


def parse_verdict(text: str) -> dict:
    """{"agrees": bool, "rationale": str} from the judge's JSON, tolerantly ("yes"/"false" strings too)."""
    data = extract_json_object(text)
    agrees = data.get("agrees")
    if isinstance(agrees, str):
        agrees = _WORDS.get(agrees.strip().lower(), agrees)
    if not isinstance(agrees, bool):
        raise ParseError(f"'agrees' must be true or false, got {agrees!r}")
    rationale = data.get("rationale")
    if not isinstance(rationale, str) or not rationale.strip():
        raise ParseError("the JSON has no non-empty 'rationale' string")
    return {"agrees": agrees, "rationale": rationale.strip()}


class Verify(TeacherPaths):
    """Reads `question`, `scenario`, `reference_answer`, `answer` and `reasoning`; writes `verdict`
    ({"agrees", "rationale"} of the kept path), `verified` (bool) and `verified_paths` (how many
    paths the judge accepted), and replaces `reasoning` and `answer` with the kept path's.

    The kept path is the first verified one, else the teacher's first. A row judged wrong stays
    in the step file with `verified` false; it is never dropped here.

    Args:
        llm: the judge (`${llm}`; any other client, e.g. a cheaper model).
        prompt: template with `system` and `user`, filled with `question`, `scenario`,
            `reference_answer`, `answer` and `shape` (the verdict's JSON shape, read from its schema).
        samples: reasoning paths per question. The first is the one the teacher step wrote;
            each further one is one more teacher call with its own seed, through the teacher
            step's own prompt and document order. Every path is judged.
        teacher: the teacher step (`${steps.reason_distill}`); needed when samples > 1.
        teacher_step: the teacher step's name, so its document shuffle is reproduced exactly.
        max_retries: re-asks after a verdict that is not the expected JSON.
    """

    input_roles = ("question", "scenario", "reference_answer", "answer", "reasoning")
    output_roles = ("verdict", "verified", "verified_paths", "reasoning", "answer")
    rewrites = ("reasoning", "answer")

    schema = VERDICT_SCHEMA
    schema_name = "verdict"
    stand_ins = {"verdict": {"agrees": True, "rationale": ("rationale", 40)}, "verified": True, "verified_paths": 1}

    def __init__(
        self,
        llm: LLMClient,
        prompt: dict,
        samples: int = 1,
        teacher: ReasonDistill | None = None,
        teacher_step: str = "reason_distill",
        max_retries: int = 2,
        inputs=None,
        outputs=None,
    ):
        super().__init__(llm, samples, teacher, teacher_step, inputs, outputs)
        self.prompt = as_template(prompt, {"question", "scenario", "reference_answer", "answer", "shape"}, "verify")
        self.max_retries = int(max_retries)

    def render(self, row: dict) -> list[dict]:
        """The judge's request: the question, its scenario, the reference answer and the row's answer."""
        return self.fill(
            question=self.value(row, "question"),
            scenario=row.get(self.inputs["scenario"]) or "",
            reference_answer=self.value(row, "reference_answer"),
            answer=self.value(row, "answer"),
        )

    def parse(self, text: str, row: dict) -> dict:
        return parse_verdict(text)

    async def judge(self, row: dict, answer: str | None) -> dict:
        """The verdict on one final answer; an answer-less path is rejected without a call."""
        if not answer:
            return {"agrees": False, "rationale": NO_ANSWER}
        return await self.call({**row, self.inputs["answer"]: answer})

    async def _more_paths(self, row: dict) -> list[dict]:
        """Paths 2..samples from the teacher, asked at once; a spoiled path is left out."""
        paths = await asyncio.gather(*(self.teacher_path(row, number) for number in range(2, self.samples + 1)))
        return [{"reasoning": path["reasoning"], "answer": path["answer"]} for path in paths if path is not None]

    async def process(self, row: dict) -> dict:
        self.value(row, "reference_answer")  # a row without one fails here, before any call
        first = {"reasoning": self.value(row, "reasoning"), "answer": row.get(self.inputs["answer"])}
        paths = [first, *(await self._more_paths(row) if self.teacher else [])]
        verdicts = await asyncio.gather(*(self.judge(row, path["answer"]) for path in paths))
        agreed = [number for number, verdict in enumerate(verdicts) if verdict["agrees"]]
        kept = agreed[0] if agreed else 0
        return {
            "verdict": verdicts[kept],
            "verified": bool(agreed),
            "verified_paths": len(agreed),
            "reasoning": paths[kept]["reasoning"],
            "answer": paths[kept]["answer"],
        }
