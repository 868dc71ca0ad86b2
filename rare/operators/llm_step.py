"""The LLM task contract: a row step that calls an LLM declares its answer's schema and writes
`render(row) -> messages` and `parse(text, row) -> fields`; this base does the rest (cutting
documents to the context, the call, re-asking with the error, the finish-reason check, usage,
dry-run stand-ins)."""

import logging
import re
from collections.abc import Mapping
from pathlib import Path

from rare.errors import RowError
from rare.llm import litellm, load_litellm  # litellm: imported on first use
from rare.llm.client import LLMClient
from rare.llm.content import LENGTH, UNUSABLE, UnusableAnswer
from rare.llm.model_facts import remembered, text_key
from rare.llm.model_facts import save as save_facts
from rare.llm.parsing import ParseError, extract_json_object
from rare.llm.schema import json_shape, wire_schema
from rare.llm.tokens import cut_to_tokens, tokenizer_for
from rare.pipeline.step_contract import RowOperator

log = logging.getLogger(__name__)

FALLBACK_CONTEXT_TOKENS = 32768  # context assumed for a model litellm does not know (and no local n_ctx)
PROMPT_RESERVE_TOKENS = 256  # room for the row's other values (question, scenario) besides the template
MIN_DOCUMENT_TOKENS = 64  # a budget never goes below this, however small the context
SHAPE_PLACEHOLDER = re.compile(r"\{\{-?\s*shape\s*-?\}\}")  # where a prompt shows the answer's JSON shape


def context_tokens(llm: LLMClient) -> int:
    """The model's context window: the embedded server's n_ctx, litellm's model table, or the fallback."""
    n_ctx = getattr(llm.server, "n_ctx", None)
    if n_ctx:
        return int(n_ctx)
    return remembered(facts_path(llm), f"context_tokens:{llm.model}", lambda: _litellm_context_tokens(llm.model))


def _litellm_context_tokens(model: str) -> int:
    try:
        info = litellm.get_model_info(model)
        return int(info.get("max_input_tokens") or info.get("max_tokens") or FALLBACK_CONTEXT_TOKENS)
    except Exception:  # litellm raises for models it does not know
        return FALLBACK_CONTEXT_TOKENS


def facts_path(llm: LLMClient) -> Path | None:
    """Where the model facts of this client's response cache are kept (None without a cache)."""
    return None if llm.cache is None else llm.cache.path.with_name(f"{llm.cache.path.stem}.model_facts.json")


def token_count(llm: LLMClient, text: str) -> int:
    """Tokens of `text` for the model (0 when there is no tokenizer for it), remembered by the cache."""
    tokenizer = tokenizer_for(llm.model, llm.server)
    return remembered(
        facts_path(llm), f"tokens:{tokenizer.name}:{text_key(text)}", lambda: len(tokenizer.encode(text) or [])
    )


class LLMRowOperator(RowOperator):
    """A row step that asks an LLM, written as a task: declare the answer, render, parse.

    A subclass sets `schema` (the answer's JSON schema; None = free text) and `schema_name`, and
    implements `render(row) -> messages` (through `fill(**values)`, which gives its prompt the
    `{{ shape }}` read from the schema, and `fit_documents(texts)`) and `parse(text, row) ->
    fields` (by role; a list of them for a fan-out step), raising ParseError for an unusable
    answer. This base asks (`call`): a JSON answer that `parse` refuses is asked again with the
    error, a free-text answer cut at the token cap fails the row unless `allow_truncated`; it
    records how many documents were cut in `truncated_role`, and counts usage. `stand_ins` are
    the outputs a dry run assumes (a ("label", tokens) pair is a placeholder of that size).

    Args:
        llm: the LLM client.
        max_document_tokens: tokens each document in a prompt may have; a longer one is cut (with
            a warning, and recorded in the row). None = an equal share of the model's context
            after the answer budget (`llm.params.max_tokens`) and the prompt template.
    """

    schema: dict | None = None  # the answer's JSON schema; None = free text
    schema_name: str = "answer"  # the schema's name in the request (and in errors)
    truncated_role: str | None = None  # output role recording how many shown documents were cut
    stand_ins: dict = {}  # role -> the value a dry run assumes for it
    allow_truncated: bool = False  # free text: keep an answer cut at the token cap
    max_retries: int = 2  # JSON: re-asks after an answer `parse` refuses

    def __init__(
        self,
        llm: LLMClient,
        inputs: Mapping[str, str] | None = None,
        outputs: Mapping[str, str] | None = None,
        max_document_tokens: int | None = None,
    ):
        super().__init__(inputs, outputs)
        if max_document_tokens is not None and int(max_document_tokens) < 1:
            raise ValueError(f"max_document_tokens must be at least 1 or null, got {max_document_tokens}")
        self.llm = llm
        self.concurrency = llm.concurrency
        self.max_document_tokens = None if max_document_tokens is None else int(max_document_tokens)
        self.truncated_documents = 0
        self._budgets: dict[int, int] = {}
        self._cut = 0  # documents cut while rendering the current request

    # -- the task: what a subclass writes

    def render(self, row: dict) -> list[dict]:
        """The request for `row` (chat messages). Synchronous: the documents it fits count for this request."""
        raise NotImplementedError

    def parse(self, text: str, row: dict) -> dict | list[dict]:
        """The step's fields (by role) from the answer `text`; ParseError when it is unusable."""
        raise NotImplementedError

    # -- what the base derives from it

    @property
    def shape(self) -> str:
        """The answer's JSON shape as the prompt shows it, read from `schema` ("" for free text)."""
        return "" if self.schema is None else json_shape(self.schema)

    def reask_shape(self) -> str:
        """What a re-ask asks for ("Reply with only the JSON object <this>")."""
        return self.shape

    def fill(self, **values) -> list[dict]:
        """The step's prompt rendered with `values` and the answer's `shape`."""
        return self.prompt.render(shape=self.shape, **values)

    def request(self, row: dict) -> tuple[list[dict], int]:
        """The request for `row`, and how many of its documents were cut to the token budget."""
        self._cut = 0
        messages = self.render(row)
        return messages, self._cut

    def messages(self, row: dict) -> list[dict]:
        """The first request for `row` (what a dry run counts and export shows)."""
        return self.request(row)[0]

    def dry_run_outputs(self, placeholder) -> dict:
        """`stand_ins` with each ("label", tokens) pair made a placeholder text (a dry run asks no model)."""

        def made(value):
            if isinstance(value, tuple):
                return placeholder(*value)
            if isinstance(value, dict):
                return {key: made(item) for key, item in value.items()}
            if isinstance(value, list):
                return [made(item) for item in value]
            return value

        return {role: made(value) for role, value in self.stand_ins.items()}

    def truncation(self, cut: int):
        """The value recorded in `truncated_role` for `cut` documents cut."""
        return cut

    async def process(self, row: dict) -> dict | list[dict]:
        return await self.call(row)

    async def call(self, row: dict, params: dict | None = None) -> dict | list[dict]:
        """One task on `row`: render, ask, parse; `params` override the sampling parameters."""
        messages, cut = self.request(row)
        if self.schema is None:
            fields = self.parse(await self.ask_text(messages, params), row)
        else:
            fields = await self.ask_json(messages, lambda text: self.parse(text, row), params)
        if self.truncated_role is not None:
            for one in fields if isinstance(fields, list) else [fields]:
                one[self.truncated_role] = self.truncation(cut)
        return fields

    def check(self) -> list[str]:
        return self.llm.check()

    def clients(self) -> list[LLMClient]:
        return [self.llm]

    def usage(self) -> dict:
        usage = self.llm.usage.as_dict()
        pacing = self.llm.pacing()
        if pacing is not None:
            usage["limiter"] = pacing
        if self.truncated_documents:
            usage["truncated_documents"] = self.truncated_documents
        return usage

    def document_budget(self, documents: int) -> int:
        """Tokens each of the `documents` documents shown in one prompt may have."""
        if self.max_document_tokens is not None:
            return self.max_document_tokens
        if documents not in self._budgets:
            prompt = getattr(self, "prompt", None)
            source = f"{getattr(prompt, 'system', '')}\n{getattr(prompt, 'user', '')}"
            template = token_count(self.llm, SHAPE_PLACEHOLDER.sub(lambda _: self.shape, source))  # the shape as shown
            answer = int(self.llm.params.get("max_tokens") or self.llm.params.get("max_completion_tokens") or 0)
            room = context_tokens(self.llm) - answer - template - PROMPT_RESERVE_TOKENS
            self._budgets[documents] = max(MIN_DOCUMENT_TOKENS, room // max(1, documents))
        return self._budgets[documents]

    def fit_documents(self, texts: list[str]) -> list[str]:
        """`texts`, the documents of one prompt, each cut to the budget (counted for this request)."""
        if not texts:
            return []
        budget = self.document_budget(len(texts))
        tokenizer = tokenizer_for(self.llm.model, self.llm.server)
        fitted, cut = [], 0
        for text in texts:
            shorter = cut_to_tokens(tokenizer, text, budget) if isinstance(text, str) else None
            fitted.append(text if shorter is None else shorter)
            cut += shorter is not None
        if cut:
            if not self.truncated_documents:
                log.warning(
                    "step '%s': documents longer than %d tokens are cut to fit the model's context; rows record "
                    "it, and the count is in the manifest (set steps.%s.max_document_tokens to change the budget)",
                    self.name,
                    budget,
                    self.name,
                )
            self.truncated_documents += cut
        self._cut += cut
        return fitted

    def open(self) -> None:
        if self.llm.server is not None:
            # While the embedded server runs, SIGTERM raises SystemExit (and Ctrl-C
            # KeyboardInterrupt) wherever the main thread is. Landing inside litellm's first import
            # (seconds of CPU), it left litellm half initialized, or pydantic turned it into a
            # SchemaError: imported before the server starts, a signal ends the run cleanly.
            load_litellm()
        self.llm.open()

    def close(self) -> None:
        facts = facts_path(self.llm)
        if facts is not None and self.llm.cache.path.exists():  # beside a cache that holds answers, never alone
            save_facts(facts)
        if self.truncated_documents:
            log.warning("step '%s': cut %d documents to the token budget", self.name, self.truncated_documents)
        self.llm.close()

    async def ask_text(self, messages: list[dict], params: dict | None = None) -> str:
        """The model's free-text answer, stripped; one cut at the token cap fails the row unless `allow_truncated`."""
        try:
            answer = await self.llm.complete(messages, params=params, allow_cut=self.allow_truncated)
        except UnusableAnswer as error:
            if error.failure_kind != LENGTH:
                raise
            hint = f"{error}, or set steps.{self.name}.allow_truncated=true"
            raise UnusableAnswer(hint, LENGTH, error.text, error.reason) from None
        return answer.text.strip()

    async def ask_json(self, messages: list[dict], parse, params: dict | None = None):
        """`parse(answer text)` of the first usable answer; `parse` raises ParseError for an unusable one.

        Text with no JSON object in it (cut, garbled: what a glitch leaves) is asked again at once
        by the client, as a fresh call. An answer whose JSON is wrong (placeholders, repeated
        questions: the model's own doing), or the same garbled text twice, gets a re-ask that shows
        the model its answer and what was wrong with it (so a cache never replays the bad answer)
        and asks again for `reask_shape()`; after `max_retries` re-asks the row fails. An answer
        cut at the token cap on every attempt fails at once.
        """
        error, name, schema = None, self.schema_name, wire_schema(self.schema)
        for _ in range(self.max_retries + 1):
            try:
                answer = await self.llm.complete(
                    messages,
                    json_schema=schema,
                    schema_name=name,
                    params=params,
                    check=extract_json_object,
                    allow_cut=False,
                )
                return parse(answer.text)
            except UnusableAnswer as unusable:
                if unusable.failure_kind != UNUSABLE:
                    raise  # empty on every attempt, or cut at the cap: showing it to the model cannot help
                error, text, problem = unusable, unusable.text, unusable.reason
            except ParseError as parse_error:
                error, text, problem = parse_error, answer.text, str(parse_error)
            messages = messages[:2] + [
                {"role": "assistant", "content": text},
                {
                    "role": "user",
                    "content": f"That answer could not be used: {problem}. Reply with only the JSON object "
                    f"{self.reask_shape()} and nothing else.",
                },
            ]
        raise RowError(f"no usable {name} JSON after {self.max_retries + 1} rounds of attempts: {error}", UNUSABLE)
