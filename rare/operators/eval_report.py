"""EvalReport: the accuracy of a model's choices with and without the retrieved documents (`rare eval`)."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from rich.table import Table

from rare.operators.answers import matches_gold
from rare.pipeline.progress import console
from rare.pipeline.step_contract import CorpusOperator
from rare.rundir.manifest import write_json

log = logging.getLogger(__name__)

EVAL_FILE = "eval.json"
MODES = ("with_documents", "without_documents")


class EvalReport(CorpusOperator):
    """Reads `options`, `gold` and the choices `with_documents` and `without_documents`; writes
    `with_documents_correct` and `without_documents_correct` (bool per row).

    Before the rows pass, it scores every row once and writes `<run_dir>/eval.json`: per mode
    the accuracy overall and per option count (0 = open questions, matched by normalized text),
    and prints the table. Every answer and reasoning stays in the run's step files.

    Args:
        run_dir: the run dir (`${paths.output_dir}`), where eval.json goes.
        model: the model evaluated, named in the report.
    """

    input_roles = ("options", "gold", "with_documents", "without_documents")
    output_roles = ("with_documents_correct", "without_documents_correct")

    def __init__(self, run_dir: str, model: str = "", inputs=None, outputs=None):
        super().__init__(inputs, outputs)
        self.run_dir = Path(run_dir)
        self.model = str(model)

    def _scores(self, row: dict) -> dict[str, bool]:
        options = row.get(self.inputs["options"]) or None
        gold = self.value(row, "gold")
        return {f"{mode}_correct": matches_gold(row.get(self.inputs[mode]), gold, options) for mode in MODES}

    def prepare(self, rows) -> None:
        right: dict[str, Counter] = {mode: Counter() for mode in MODES}
        asked: Counter = Counter()
        for row in rows:
            count = len(row.get(self.inputs["options"]) or {})
            asked[count] += 1
            for name, correct in self._scores(row).items():
                right[name.removesuffix("_correct")][count] += correct
        total = sum(asked.values())
        report = {"model": self.model, "questions": total}
        for mode in MODES:
            report[mode] = {
                "accuracy": round(sum(right[mode].values()) / total, 4) if total else None,
                "correct": sum(right[mode].values()),
                "by_option_count": {
                    str(count): {
                        "questions": asked[count],
                        "correct": right[mode][count],
                        "accuracy": round(right[mode][count] / asked[count], 4),
                    }
                    for count in sorted(asked)
                },
            }
        write_json(self.run_dir / EVAL_FILE, report)
        self._print(report)

    def _print(self, report: dict) -> None:
        table = Table(title=f"rare eval: {self.model}, {report['questions']} questions", title_justify="left")
        for column in ("options", "questions", "with documents", "without documents"):
            table.add_column(column, justify="right")
        counts = report["with_documents"]["by_option_count"]
        for count, cell in counts.items():
            shown = [f"{report[mode]['by_option_count'][count]['accuracy']:.1%}" for mode in MODES]
            table.add_row("open" if count == "0" else count, str(cell["questions"]), *shown)
        overall = [f"{report[mode]['accuracy']:.1%}" if report[mode]["accuracy"] is not None else "-" for mode in MODES]
        table.add_row("all", str(report["questions"]), *overall)
        console.print(table)
        console.print(f"every answer: the run's step files; the accuracy: {self.run_dir / EVAL_FILE}", highlight=False)

    def process_batch(self, rows: list[dict]) -> list[dict]:
        return [self._scores(row) for row in rows]
