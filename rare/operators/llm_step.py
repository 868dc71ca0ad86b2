"""The shared base of row steps that call an LLM: they run, check and report through their client."""

from rare.llm.client import LLMClient
from rare.operator import RowOperator


class LLMRowOperator(RowOperator):
    """A row step with an `llm`: concurrency, workers, key checks, usage and start/stop follow it."""

    def __init__(self, llm: LLMClient, inputs=None, outputs=None):
        super().__init__(inputs, outputs)
        self.llm = llm
        self.concurrency = llm.concurrency
        self.workers = llm.workers

    def check(self) -> list[str]:
        return self.llm.check()

    def usage(self) -> dict:
        return self.llm.usage.as_dict()

    def open(self) -> None:
        self.llm.open()

    def close(self) -> None:
        self.llm.close()
