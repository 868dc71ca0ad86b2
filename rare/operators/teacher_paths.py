"""The shared base of steps that ask the teacher step for more reasoning paths, each with its own
seed (verify's samples, answer_check's rejection sampling)."""

from rare.errors import ConfigError, RowError
from rare.llm.client import LLMClient
from rare.llm.usage import merge_usage
from rare.operators.llm_step import LLMRowOperator
from rare.operators.reason_distill import ReasonDistill
from rare.pipeline.seeding import derive_seed
from rare.pipeline.step_contract import StepContext


class TeacherPaths(LLMRowOperator):
    """An LLM step (its `llm` is a judge) that can draw paths 2..`samples` from `teacher`.

    The teacher is a copy of the teacher step (`${steps.reason_distill}`), bound under that
    step's name (`teacher_step`) so it shows the model the same prompt and document order; its
    calls are counted in this step's usage.
    """

    def __init__(
        self, llm: LLMClient, samples: int, teacher: ReasonDistill | None, teacher_step: str, inputs=None, outputs=None
    ):
        super().__init__(llm, inputs, outputs)
        if int(samples) < 1:
            raise ConfigError(f"samples must be at least 1, got {samples}")
        if int(samples) > 1 and not isinstance(teacher, ReasonDistill):
            raise ConfigError(
                f"samples={samples} needs the teacher step to sample more paths; set "
                f"steps.<this step>.teacher=${{steps.{teacher_step}}} (and enable that step), or samples=1"
            )
        self.samples = int(samples)
        self.teacher = teacher if self.samples > 1 else None
        self.teacher_step = str(teacher_step)

    def bind(self, context: StepContext) -> None:
        super().bind(context)
        if self.teacher is not None:  # the teacher's shuffle is seeded by its own step name
            self.teacher.bind(StepContext(name=self.teacher_step, index=context.index, seed=context.seed))

    def check(self) -> list[str]:
        return super().check() + (self.teacher.check() if self.teacher else [])

    def open(self) -> None:
        super().open()
        if self.teacher is not None:
            self.teacher.open()

    def close(self) -> None:
        if self.teacher is not None:
            self.teacher.close()
        super().close()

    def clients(self) -> list[LLMClient]:
        """The judge, then the teacher's clients (its calls go through them)."""
        if self.teacher is None:
            return super().clients()
        return list({id(client): client for client in [*super().clients(), *self.teacher.clients()]}.values())

    def usage(self) -> dict:
        """The judge's and the extra teacher calls' usage together."""
        return merge_usage([super().usage(), self.teacher.usage()]) if self.teacher else super().usage()

    async def teacher_path(self, row: dict, number: int) -> dict | None:
        """Path `number` (2, 3, ...) of `row` from the teacher, with a seed of its own (run seed,
        this step, row id, number); None when the teacher spoils it (empty, cut off)."""
        seed = derive_seed(self.context.seed, self.context.name, f"{row['id']}#path{number}") % 2**31
        try:
            return await self.teacher.call(row, params={"seed": seed})
        except RowError:
            return None
