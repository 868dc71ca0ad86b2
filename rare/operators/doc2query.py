"""Doc2Query: for each document, ask an LLM for one hard, self-contained question and scenario."""

import re

from rare.errors import RowError
from rare.llm.client import LLMClient
from rare.llm.parsing import ParseError, extract_json_object
from rare.operators.llm_step import LLMRowOperator
from rare.prompts import as_template

HARD_QUERY_SCHEMA = {
    "type": "object",
    "properties": {
        "hard_query": {
            "type": "object",
            "properties": {"question": {"type": "string"}, "scenario": {"type": "string"}},
            "required": ["question", "scenario"],
            "additionalProperties": False,
        }
    },
    "required": ["hard_query"],
    "additionalProperties": False,
}


MIN_WORDS = 4  # shorter "questions" are copied placeholders or fragments
_PLACEHOLDER = re.compile(r"[<\[{(].*[>\]})]|\.\.\.|the (question|scenario)", re.IGNORECASE)


def parse_hard_query(text: str) -> tuple[str, str]:
    """(question, scenario) from `{"hard_query": {"question": ..., "scenario": ...}}`, tolerantly."""
    data = extract_json_object(text)
    query = data.get("hard_query", data)
    if not isinstance(query, dict):
        raise ParseError(f"'hard_query' must be an object, got {type(query).__name__}")
    question, scenario = query.get("question"), query.get("scenario")
    if not isinstance(question, str) or not question.strip():
        raise ParseError("the JSON has no non-empty 'question' string")
    if not isinstance(scenario, str) or not scenario.strip():
        raise ParseError("the JSON has no non-empty 'scenario' string")
    for name, value in (("question", question), ("scenario", scenario)):
        if _PLACEHOLDER.fullmatch(value.strip()) or len(value.split()) < MIN_WORDS:
            raise ParseError(f"the {name} {value.strip()!r} is a placeholder, not a real {name}")
    return question.strip(), scenario.strip()


class Doc2Query(LLMRowOperator):
    """Reads `text`; writes `question` and `scenario`.

    Args:
        llm: the LLM client (`${llm}`).
        prompt: template with `system` and `user`, filled with `{{ text }}`.
        max_retries: re-asks after an answer that is not the expected JSON; the re-ask shows
            the model its answer and the parse error (so a cache never replays the bad answer).
    """

    input_roles = ("text",)
    output_roles = ("question", "scenario")

    def __init__(self, llm: LLMClient, prompt: dict, max_retries: int = 2, inputs=None, outputs=None):
        super().__init__(llm, inputs, outputs)
        self.prompt = as_template(prompt, {"text"}, "doc2query")
        self.max_retries = int(max_retries)

    def dry_run_outputs(self, placeholder) -> dict:
        """Stand-ins of a typical size for this step's outputs (a dry run asks no model)."""
        return {"question": placeholder("question", 40), "scenario": placeholder("scenario", 80)}

    def messages(self, row: dict) -> list[dict]:
        """The first request for `row`."""
        return self.prompt.render(text=self.value(row, "text"))

    async def process(self, row: dict) -> dict:
        messages = self.messages(row)
        error = None
        for _ in range(self.max_retries + 1):
            answer = await self.llm.complete(messages, json_schema=HARD_QUERY_SCHEMA, schema_name="hard_query")
            try:
                question, scenario = parse_hard_query(answer.text)
                return {"question": question, "scenario": scenario}
            except ParseError as parse_error:
                error = parse_error
                messages = messages[:2] + [
                    {"role": "assistant", "content": answer.text},
                    {
                        "role": "user",
                        "content": f"That answer could not be used: {parse_error}. Reply with only the JSON object "
                        '{"hard_query": {"question": "...", "scenario": "..."}} and nothing else.',
                    },
                ]
        raise RowError(f"no usable hard_query JSON after {self.max_retries + 1} attempts: {error}")
