"""The small contract every pipeline step implements; the runner owns everything else.

An operator reads some row fields (`inputs`: role -> column) and returns only its new
fields by role; the runner renames them to columns (`outputs`: role -> column), merges them
into the row, writes, resumes and retries. Operators never see storage or executors.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from rare.errors import ConfigError, RowError
from rare.pipeline.seeding import row_rng


@dataclass(frozen=True)
class StepContext:
    """What the runner tells a step about its place in the run."""

    name: str
    index: int
    seed: int


class Operator:
    """Base of all steps. Subclasses set `input_roles` and `output_roles`."""

    input_roles: tuple[str, ...] = ()
    output_roles: tuple[str, ...] = ()
    rewrites: tuple[str, ...] = ()  # output roles that replace a column an earlier step wrote
    optional_inputs: tuple[str, ...] = ()  # input roles used when the row has them; the graph never waits for them
    placement: str = "data"  # run order: "data" = after the writers of what it reads; "first" = a filter, before
    # every step its reads do not wait for; "last" = a sink, after every other step
    barrier: bool = False  # it needs every row of the step before at once (duplicates across the corpus): a
    # streaming run waits for all of them here; the steps after the last barrier stream rows to each other
    keeps_documents: bool = False  # its rows are still the input documents, one each (a filter that removes some):
    # a later step's `pool = "documents"` indexes them

    def __init__(self, inputs: Mapping[str, str] | None = None, outputs: Mapping[str, str] | None = None):
        self.inputs = self._roles("inputs", self.input_roles, inputs)
        self.outputs = self._roles("outputs", self.output_roles, outputs)
        self.context = StepContext(name=type(self).__name__, index=0, seed=0)

    def _roles(self, kind: str, roles: tuple[str, ...], given: Mapping[str, str] | None) -> dict[str, str]:
        mapping = {role: role for role in roles}
        unknown = set(given or {}) - set(roles)
        if unknown:
            raise ConfigError(f"{type(self).__name__}: unknown {kind} {sorted(unknown)}; its {kind} are {list(roles)}")
        mapping.update(dict(given or {}))
        return mapping

    @property
    def name(self) -> str:
        return self.context.name

    @property
    def reads(self) -> list[str]:
        """Row columns this step needs (its optional inputs left out)."""
        return [column for role, column in self.inputs.items() if role not in self.optional_inputs]

    @property
    def writes(self) -> list[str]:
        """Row columns this step adds."""
        return list(self.outputs.values())

    def bind(self, context: StepContext) -> None:
        """Called by the runner before the step runs."""
        self.context = context

    def check(self) -> list[str]:
        """Problems that would stop this step (missing key, no Java); checked before any work."""
        return []

    def open(self) -> None:
        """Acquire what the step needs while it runs (e.g. start an embedded model server)."""

    def close(self) -> None:
        """Release what `open` acquired; always called, also on errors and Ctrl-C."""

    def value(self, row: Mapping, role: str):
        """The row's value for an input role; a missing or empty value fails only this row."""
        column = self.inputs[role]
        value = row.get(column)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise RowError(f"field '{column}' is missing or empty")
        return value

    def to_columns(self, fields: Mapping[str, object]) -> dict:
        """Rename role-keyed results to the configured output columns."""
        return {self.outputs[role]: value for role, value in fields.items()}

    def row_ids(self, row_id: str) -> list[str]:
        """Ids of the rows this step writes for input row `row_id` (a fan-out step writes several)."""
        return [row_id]

    def rng(self, row_id: str):
        """A random generator seeded from (run seed, step, row id)."""
        return row_rng(self.context.seed, self.context.name, row_id)

    def usage(self) -> dict:
        """Tokens and cost spent by this step so far (LLM steps override)."""
        return {}

    def clients(self) -> list:
        """Every LLM client this step calls through, its own first, then those of the steps it holds.

        Executors and worker processes ask this (to flush cached answers, pace calls at a shared
        rate limit, refuse a client they cannot run); a step holding a client must list it here.
        """
        return []

    def retrievers(self) -> list:
        """The retriever this step searches, if it has one (a list of at most one)."""
        return []


class RowOperator(Operator):
    """A step that is an async function of one row (the LLM steps)."""

    concurrency: int = 16

    async def process(self, row: dict) -> dict | list[dict]:
        """Return the new fields for `row`, keyed by output role; raise RowError to fail it.

        A fan-out step returns a list: one dict per id of `row_ids(row["id"])`, each its own row.
        """
        raise NotImplementedError


class CorpusOperator(Operator):
    """A step that first sees the whole dataset, then answers batches of rows (BM25)."""

    batch_size: int = 1000
    pool: str = "rows"  # what `prepare` sees: "rows" = the rows it answers (the step before's output);
    # "documents" = the input documents as the steps that keep them left them (`keeps_documents`:
    # doc_filter's duplicates removed), known before any earlier row step has run
    pool_roles: tuple[str, ...] = ()  # input roles `prepare` reads from its pool's rows (checked before any work)

    @property
    def barrier(self) -> bool:
        """A step whose pool is its own input rows needs all of them before its first batch; one whose pool
        is the documents (known at the start) answers micro-batches of whatever rows are ready."""
        return self.pool == "rows"

    def prepare(self, rows: Iterable[dict]) -> None:
        """See every row of the step's `pool` once (build or load an index). `rows` is a one-shot stream."""

    def process_batch(self, rows: list[dict]) -> list[dict | RowError]:
        """New fields (by role) for each row, or a RowError for rows that fail."""
        raise NotImplementedError
