"""The operator graph: the order steps run in (by what they read and write), and the check before
any work that every read is produced and no write collides."""

from rare.errors import ConfigError
from rare.pipeline.step_contract import CorpusOperator, Operator

POOLS = ("rows", "documents")  # what a corpus step's `prepare` may see (`CorpusOperator.pool`)


def run_order(steps: list[tuple[str, Operator]]) -> list[tuple[str, Operator]]:
    """`steps` (name, operator) in the order their data needs: a step runs after every step that writes
    a column it reads (a step replacing a column, after the step that first wrote it); a filter
    (`placement = "first"`) before every step its reads do not wait for; a sink (`"last"`) after
    all others. Steps that do not depend on each other keep their config order, so the order never
    hangs on where a key landed when Hydra merged two mappings. A cycle keeps config order;
    `graph_problems` then names the edge.
    """
    writers: dict[str, list[int]] = {}
    for position, (_, op) in enumerate(steps):
        for column in op.writes:
            writers.setdefault(column, []).append(position)
    after: dict[int, set[int]] = {position: set() for position in range(len(steps))}
    for position, (_, op) in enumerate(steps):
        replaced = {op.outputs[role] for role in op.rewrites}
        for column in set(op.reads) | replaced:
            for writer in writers.get(column, []):
                _, other = steps[writer]
                both_replace = column in replaced and column in {other.outputs[r] for r in other.rewrites}
                if writer != position and not (both_replace and writer > position):
                    after[position].add(writer)
    _place(steps, after)
    ordered: list[int] = []
    while len(ordered) < len(steps):
        ready = [p for p in range(len(steps)) if p not in ordered and after[p] <= set(ordered)]
        ordered.append(ready[0] if ready else next(p for p in range(len(steps)) if p not in ordered))
    return [steps[position] for position in ordered]


def _place(steps: list[tuple[str, Operator]], after: dict[int, set[int]]) -> None:
    """Add the edges of filters (first) and sinks (last) to the data edges `after`."""
    placement = [op.placement for _, op in steps]
    for filter_position in (p for p, where in enumerate(placement) if where == "first"):
        needed, frontier = set(), set(after[filter_position])
        while frontier:  # the steps the filter's reads wait for, transitively
            needed |= frontier
            frontier = {q for p in frontier for q in after[p]} - needed
        for position, where in enumerate(placement):
            if where != "first" and position not in needed:
                after[position].add(filter_position)
    for sink in (p for p, where in enumerate(placement) if where == "last"):
        after[sink] |= {p for p, where in enumerate(placement) if where != "last"}


def pool_step(steps: list[Operator], index: int) -> int:
    """The step whose rows step `index` (1-based, in run order) sees in `prepare`: the step before it,
    or for `pool = "documents"` the input (step 0) as the leading `keeps_documents` steps left it."""
    if _pool(steps[index - 1]) == "rows":
        return index - 1
    documents = 0
    while documents < index - 1 and steps[documents].keeps_documents:
        documents += 1
    return documents


def _pool(op: Operator) -> str:
    return op.pool if isinstance(op, CorpusOperator) else "rows"


def _pool_problems(steps: list[Operator], input_columns: set[str]) -> list[str]:
    """A pool no step file holds, or a column `prepare` reads that its pool rows lack."""
    problems = []
    for index, op in enumerate(steps, 1):
        pool = _pool(op)
        if pool not in POOLS:
            problems.append(f"step '{op.name}': pool={pool!r} is not one of {list(POOLS)}")
            continue
        if pool != "documents":
            continue
        columns = set(input_columns).union(*(set(s.writes) for s in steps[: pool_step(steps, index)]))
        for role in op.pool_roles:
            column = op.inputs[role]
            if column not in columns:
                problems.append(
                    f"step '{op.name}' indexes the documents, but they have no '{column}' "
                    f"(steps.{op.name}.inputs.{role}; the documents have: {sorted(columns)}). "
                    f"Point it at one of those, or name an external pool with retriever.corpus."
                )
    return problems


def graph_problems(steps: list[Operator], input_columns: set[str]) -> list[str]:
    """One message per broken edge, naming the step, the key and the fix."""
    producer = {column: "the input data" for column in input_columns}
    problems = []
    for op in steps:
        for role, column in op.inputs.items():
            if column not in producer and role not in op.optional_inputs:
                problems.append(
                    f"step '{op.name}' reads '{column}', but neither the input nor an earlier step writes it "
                    f"(available: {sorted(producer)}). Point steps.{op.name}.inputs.{role} at one of those, "
                    f"or add a step that writes '{column}' before '{op.name}'."
                )
        for role, column in op.outputs.items():
            if role in op.rewrites:
                if column not in producer:
                    problems.append(
                        f"step '{op.name}' replaces '{column}', but no earlier step writes it. Point "
                        f"steps.{op.name}.outputs.{role} at the column to replace, or enable the step that writes it."
                    )
                continue
            if column in producer:
                problems.append(
                    f"step '{op.name}' writes '{column}', which {producer[column]} already has. "
                    f"Rename it with steps.{op.name}.outputs.{role}=<new name>."
                )
            producer[column] = f"step '{op.name}'"
    return problems + _pool_problems(steps, input_columns)


def raise_if_problems(problems: list[str], heading: str) -> None:
    if problems:
        listed = "\n".join(f"  - {problem}" for problem in problems)
        raise ConfigError(f"{heading}:\n{listed}")
