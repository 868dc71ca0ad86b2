"""Doc2Query: for each document, ask an LLM for hard, self-contained questions, each with a
scenario and a short reference answer written with the document in view."""

import re

from rare.llm.client import LLMClient
from rare.llm.parsing import ParseError, extract_json_object
from rare.operators.llm_step import LLMRowOperator
from rare.operators.prompts import as_template
from rare.retrieval.dedup import words

FIELDS = ("question", "scenario", "reference_answer")


# Characters each field may have when the server turns the schema into a grammar (llama.cpp):
# the lower bound forbids placeholders ("1.3", a bare title), the upper one ends a runaway answer.
GRAMMAR_LENGTHS = {"question": (30, 400), "scenario": (60, 800), "reference_answer": (10, 400)}


def hard_queries_schema(count: int, bounded: bool = False) -> dict:
    """The answer's JSON schema: a list of `count` queries.

    Item counts are bounded when count > 1, so the default request stays within what every
    provider's structured output accepts. `bounded` (a grammar-constrained server) also bounds the
    list to `count` items and each string's length: without it a small model appends items until
    its token cap, and the answer is cut.
    """
    properties = {field: {"type": "string"} for field in FIELDS}
    if bounded:
        for field, (shortest, longest) in GRAMMAR_LENGTHS.items():
            properties[field].update(minLength=shortest, maxLength=longest)
    query = {
        "type": "object",
        "properties": properties,
        "required": list(FIELDS),
        "additionalProperties": False,
    }
    queries = {"type": "array", "items": query}
    if count > 1 or bounded:
        queries.update(minItems=count, maxItems=count)
    return {
        "type": "object",
        "properties": {"hard_queries": queries},
        "required": ["hard_queries"],
        "additionalProperties": False,
    }


MIN_WORDS = 4  # shorter questions or scenarios are copied placeholders or fragments
_PLACEHOLDER = re.compile(r"[<\[{(].*[>\]})]|\.\.\.|the (question|scenario|reference answer)", re.IGNORECASE)


def _text(query: dict, name: str, min_words: int) -> str:
    value = query.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ParseError(f"the JSON has no non-empty '{name}' string")
    if _PLACEHOLDER.fullmatch(value.strip()) or len(words(value)) < min_words:  # words: each CJK character counts
        raise ParseError(f"the {name} {value.strip()!r} is a placeholder, not a real {name}")
    return value.strip()


def parse_hard_query(text: str) -> tuple[str, str]:
    """(question, scenario) from `{"hard_query": {"question": ..., "scenario": ...}}`, tolerantly."""
    data = extract_json_object(text)
    query = data.get("hard_query", data)
    if not isinstance(query, dict):
        raise ParseError(f"'hard_query' must be an object, got {type(query).__name__}")
    return _text(query, "question", MIN_WORDS), _text(query, "scenario", MIN_WORDS)


def parse_hard_queries(text: str, count: int) -> list[dict]:
    """The first `count` distinct queries, each {question, scenario, reference_answer}.

    Reads `{"hard_queries": [...]}`; with count 1 the DataFlow shape `{"hard_query": {...}}` is
    accepted too (its reference answer is None). Questions that are the same words (case and
    punctuation aside) count once; fewer than `count` distinct ones is a ParseError.
    """
    data = extract_json_object(text)
    if "hard_queries" not in data and count == 1:
        question, scenario = parse_hard_query(text)
        return [{"question": question, "scenario": scenario, "reference_answer": None}]
    queries = data.get("hard_queries")
    if not isinstance(queries, list):
        raise ParseError(f"'hard_queries' must be a list, got {type(queries).__name__}")
    found, seen = [], set()
    for number, query in enumerate(queries, 1):
        if not isinstance(query, dict):
            raise ParseError(f"hard_queries[{number}] must be an object, got {type(query).__name__}")
        parsed = {
            "question": _text(query, "question", MIN_WORDS),
            "scenario": _text(query, "scenario", MIN_WORDS),
            "reference_answer": _text(query, "reference_answer", 1),
        }
        key = tuple(words(parsed["question"]))
        if key not in seen:
            seen.add(key)
            found.append(parsed)
    if len(found) < count:
        repeated = f" ({len(queries) - len(found)} repeated an earlier question)" if len(queries) > len(found) else ""
        raise ParseError(f"it has {len(found)} distinct questions{repeated}, but {count} different ones were asked for")
    return found[:count]


class Doc2Query(LLMRowOperator):
    """Reads `text`; writes `question`, `scenario`, `reference_answer`, `source_id` and `text_truncated`.

    With `queries_per_doc` > 1 one document becomes that many rows, asked for in one call:
    row ids are `<doc id>#q1`, `#q2`, ... (stable, so a resumed run never asks again), and
    `source_id` is the document's id on every row (with 1, the row keeps the document's id).

    Args:
        llm: the LLM client (`${llm}`).
        prompt: template with `system` and `user`, filled with `{{ text }}`,
            `{{ queries_per_doc }}` and `{{ shape }}` (the answer's JSON shape, read from its schema).
        queries_per_doc: distinct questions per document, each its own row.
        max_retries: re-asks after an unusable answer (not JSON, too few distinct questions);
            the re-ask shows the model its answer and the error (so a cache never replays it).
        max_document_tokens: the document is cut to this many tokens (recorded in `text_truncated`);
            None = what the model's context leaves.
    """

    input_roles = ("text",)
    output_roles = ("question", "scenario", "reference_answer", "source_id", "text_truncated")
    schema_name = "hard_queries"
    truncated_role = "text_truncated"
    stand_ins = {
        "question": ("question", 40),
        "scenario": ("scenario", 80),
        "reference_answer": ("reference answer", 30),
        "source_id": "placeholder",
        "text_truncated": False,
    }

    def __init__(
        self,
        llm: LLMClient,
        prompt: dict,
        queries_per_doc: int = 1,
        max_retries: int = 2,
        inputs=None,
        outputs=None,
        max_document_tokens: int | None = None,
    ):
        super().__init__(llm, inputs, outputs, max_document_tokens)
        if int(queries_per_doc) < 1:
            raise ValueError(f"queries_per_doc must be at least 1, got {queries_per_doc}")
        self.prompt = as_template(prompt, {"text", "queries_per_doc", "shape"}, "doc2query")
        self.queries_per_doc = int(queries_per_doc)
        self.max_retries = int(max_retries)
        self.schema = hard_queries_schema(self.queries_per_doc, bounded=llm.structured_output == "json_object_schema")

    def row_ids(self, row_id: str) -> list[str]:
        if self.queries_per_doc == 1:
            return [row_id]
        return [f"{row_id}#q{k}" for k in range(1, self.queries_per_doc + 1)]

    def render(self, row: dict) -> list[dict]:
        """The document, cut to the token budget, and how many questions to write about it."""
        (text,) = self.fit_documents([self.value(row, "text")])
        return self.fill(text=text, queries_per_doc=self.queries_per_doc)

    def parse(self, text: str, row: dict) -> list[dict]:
        """One row of fields per distinct question, each naming the document it came from."""
        return [{**query, "source_id": row["id"]} for query in parse_hard_queries(text, self.queries_per_doc)]

    def truncation(self, cut: int) -> bool:
        return bool(cut)

    def reask_shape(self) -> str:
        if self.queries_per_doc == 1:
            return self.shape
        return f"{self.shape} with {self.queries_per_doc} different questions in the list"
