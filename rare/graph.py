"""Checking the operator graph before any work: every read is produced, no write collides."""

from rare.errors import ConfigError
from rare.operator import Operator


def graph_problems(steps: list[Operator], input_columns: set[str]) -> list[str]:
    """One message per broken edge, naming the step, the key and the fix."""
    producer = {column: "the input data" for column in input_columns}
    problems = []
    for op in steps:
        for role, column in op.inputs.items():
            if column not in producer:
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
    return problems


def raise_if_problems(problems: list[str], heading: str) -> None:
    if problems:
        listed = "\n".join(f"  - {problem}" for problem in problems)
        raise ConfigError(f"{heading}:\n{listed}")
