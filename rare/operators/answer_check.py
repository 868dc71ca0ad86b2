"""AnswerCheck: the teacher's choice against the gold answer, re-sampling wrong paths with new
seeds until one is right (the RARE paper's rejection sampling)."""

from rare.llm.client import LLMClient
from rare.operators.answers import matches_gold
from rare.operators.prompts import as_template
from rare.operators.qa_reason_distill import QAReasonDistill
from rare.operators.teacher_paths import TeacherPaths
from rare.operators.verify import VERDICT_SCHEMA, parse_verdict

CHECKS = ("exact", "normalized", "judge")


class AnswerCheck(TeacherPaths):
    """Reads `question`, `options`, `gold`, `gold_text`, `reasoning` and `answer` (the teacher's
    first path); writes `correct` (bool), `paths` (teacher paths drawn, 1..samples), `check` (how
    the kept path was judged: exact, normalized or judge) and replaces `reasoning` and `answer`
    with the kept path's.

    A question with options is right when the choice is the gold letter (exact). An open question
    is right when the normalized texts are equal, or, with `judge_open`, when the judge (`llm`)
    says the answer agrees with the gold. A wrong path is followed by another teacher path with
    its own seed, up to `samples` in all; the first right one is kept. A row never right keeps
    the teacher's first path with `correct: false` (export leaves it out by default).

    Args:
        llm: the judge for open questions (`${llm}`); never called unless `judge_open`.
        prompt: the judge's template (`system`, `user`), filled with `question`,
            `reference_answer`, `answer` and `shape` (the verdict's JSON shape, read from its schema).
        samples: teacher paths per question at most (the paper: 8).
        teacher: the teacher step (`${steps.reason_distill}`), reused to sample more paths.
        teacher_step: its step name (seeds its requests as that step's).
        judge_open: ask the judge about open answers that do not match the gold's normalized text.
        max_retries: re-asks after a verdict that is not the expected JSON.
    """

    input_roles = ("question", "options", "gold", "gold_text", "reasoning", "answer")
    output_roles = ("correct", "paths", "check", "reasoning", "answer")
    rewrites = ("reasoning", "answer")
    schema = VERDICT_SCHEMA
    schema_name = "verdict"
    stand_ins = {"correct": True, "paths": 1, "check": "exact"}

    def __init__(
        self,
        llm: LLMClient,
        prompt: dict,
        samples: int = 8,
        teacher: QAReasonDistill | None = None,
        teacher_step: str = "reason_distill",
        judge_open: bool = False,
        max_retries: int = 2,
        inputs=None,
        outputs=None,
    ):
        super().__init__(llm, samples, teacher, teacher_step, inputs, outputs)
        self.prompt = as_template(prompt, {"question", "reference_answer", "answer", "shape"}, "answer_check")
        self.judge_open = bool(judge_open)
        self.max_retries = int(max_retries)

    def check(self) -> list[str]:
        return super().check() if self.judge_open else (self.teacher.check() if self.teacher else [])

    def open(self) -> None:
        if self.judge_open:
            super().open()
        elif self.teacher is not None:
            self.teacher.open()

    def close(self) -> None:
        if self.judge_open:
            super().close()
        elif self.teacher is not None:
            self.teacher.close()

    def render(self, row: dict) -> list[dict]:
        """The judge's request about the row's answer to an open question, against the gold text."""
        return self.fill(
            question=self.value(row, "question"),
            reference_answer=self.value(row, "gold_text"),
            answer=row.get(self.inputs["answer"]),
        )

    def parse(self, text: str, row: dict) -> dict:
        return parse_verdict(text)

    async def judged(self, row: dict, answer: str | None) -> tuple[bool, str]:
        """(right?, how it was decided) for one path's `answer`."""
        options = row.get(self.inputs["options"]) or None
        gold = self.value(row, "gold")
        if options:
            return matches_gold(answer, gold, options), "exact"
        if matches_gold(answer, gold, None) or not self.judge_open or not answer:
            return matches_gold(answer, gold, None), "normalized"
        verdict = await self.call({**row, self.inputs["answer"]: answer})
        return verdict["agrees"], "judge"

    async def process(self, row: dict) -> dict:
        first = {"reasoning": self.value(row, "reasoning"), "answer": row.get(self.inputs["answer"])}
        right, how = await self.judged(row, first["answer"])
        kept, paths, first_how = first, 1, how
        for number in range(2, self.samples + 1):
            if right:
                break
            path = await self.teacher_path(row, number)
            paths = number
            if path is None:
                continue
            right, how = await self.judged(row, path["answer"])
            if right:
                kept = path
        if not right:
            how = first_how
        return {
            "correct": right,
            "paths": paths,
            "check": how,
            "reasoning": kept["reasoning"],
            "answer": kept["answer"],
        }
