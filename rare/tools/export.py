"""Export: a run's finished rows as the training-set files trainers read, in `<run dir>/export/`;
written at the end of a run (`export.enabled=true`) and by `rare export <run dir>`."""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from rare.errors import ConfigError, RareError, RowError
from rare.inputs.questions import GOLD, GOLD_TEXT
from rare.operators.qa_reason_distill import QAReasonDistill
from rare.pipeline.graph import raise_if_problems
from rare.rundir.record import RunRecord, rebuilt_documents, shown_documents
from rare.storage.formats import dumps, write_rows
from rare.tools.dataset_card import write_card

log = logging.getLogger(__name__)

MESSAGES, ALPACA, PARQUET = "messages.jsonl", "alpaca.jsonl", "data/train-00000-of-00001.parquet"
PROMPT_COMPLETION = "prompt_completion.jsonl"
_ANSWER_TAG = re.compile(r"<answer>.*?</answer>", re.IGNORECASE | re.DOTALL)
ANSWER_HEADING = re.compile(r"^\W*(final\s+)?answer\W*$", re.IGNORECASE)  # a line that only announces the answer


class Export:
    """The training-set files trainers read, written from a run dir's final rows into `<run_dir>/<dir>/`.

    Not a step of the graph: the runner writes it at the end of a run with `export.enabled=true`,
    and `rare export <run dir>` writes it (again, or with other options) from any run dir. It reads
    `question` and `reasoning` (the documents, `answer` and `verified` by the columns the steps
    that wrote them were configured with):

    - `messages.jsonl`: OpenAI/ShareGPT chat rows `{"messages": [system, user, assistant]}`; system
      and user are the teacher's own prompt, with the documents in the order it saw them.
    - `prompt_completion.jsonl`: TRL's conversational prompt/completion rows `{"prompt": [system,
      user], "completion": [assistant]}`: SFTTrainer puts the loss on the completion only.
    - `alpaca.jsonl`: `{"instruction": system, "input": user, "output": assistant}`.
    - `data/train-00000-of-00001.parquet` and `README.md`: a Hugging Face `datasets` folder (ids,
      documents, positive, reasoning, answer, messages) and its dataset card (config, counts,
      filters, models, cost).
    - `dataset_info.json`: LLaMA-Factory entries for the messages and alpaca files
      (`dataset_dir=<that folder>`); LLaMA-Factory puts the loss on the assistant turn only.

    Only rows with `verified` true are kept when a verify step ran, and only rows with `correct`
    true when an answer_check step ran (unless `include_incorrect`). The files are written into a
    temporary folder renamed at the end, so a crash never leaves half an export.

    Args:
        run_dir: the run dir; its config.yaml, manifest.json and last step file feed the files.
        dir: folder under `run_dir` for the files.
        dataset_name: the card's title and the LLaMA-Factory entries' prefix.
        think_tags: the assistant turn is `<think>reasoning</think>` then the final answer
            (reasoning-model form) instead of the teacher's text as it is.
        system_prompt: replaces the teacher's system prompt in the exported turns; null keeps it.
        include_incorrect: also export rows whose `correct` is false (the qa recipe's answer_check).
    """

    name = "export"

    def __init__(
        self,
        run_dir: str | Path,
        dir: str = "export",
        dataset_name: str = "rare",
        think_tags: bool = False,
        system_prompt: str | None = None,
        include_incorrect: bool = False,
    ):
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(dataset_name)):
            raise ConfigError(
                f"export dataset_name={dataset_name!r}: use letters, digits, '_', '-' or '.' (it names LLaMA-Factory entries)"
            )
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / dir
        self.dataset_name = str(dataset_name)
        self.think_tags = bool(think_tags)
        self.system_prompt = system_prompt
        self.include_incorrect = bool(include_incorrect)

    def check(self) -> list[str]:
        record = RunRecord(self.run_dir)
        problems = []
        if record.teacher() is None:
            problems.append("export needs a reason_distill step (the teacher whose turns it exports)")
        if self.think_tags and record.column("answer") not in _written_columns(record):
            problems.append("export think_tags=true needs the teacher's final `answer` column; no step writes it")
        return problems

    def write(self, rows: Iterable[dict] | None = None) -> dict:
        """Write the files from `rows` (default: the run's last step); returns what the manifest records of them."""
        record = RunRecord(self.run_dir)
        raise_if_problems(self.check(), "The run cannot be exported")
        rows = record.storage.read(len(record.steps)) if rows is None else rows
        teacher = record.teacher()
        roles = (
            "question",
            "reasoning",
            "answer",
            "verified",
            "verdict",
            "reference_answer",
            "source_id",
            "correct",
            "paths",
            "document_ids",
            "document_scores",
        )
        columns = {role: record.column(role) for role in roles}
        skipped: Counter = Counter()
        tmp = self.dir.with_name(self.dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / PARQUET).parent.mkdir(parents=True)
        with (
            open(tmp / MESSAGES, "w", encoding="utf-8") as messages,
            open(tmp / PROMPT_COMPLETION, "w", encoding="utf-8") as prompt_completion,
            open(tmp / ALPACA, "w", encoding="utf-8") as alpaca,
        ):

            def records():
                for row in rows:
                    reason = self._skip_reason(row, columns)
                    if reason:
                        skipped[reason] += 1
                        continue
                    try:
                        out = self._record(row, teacher, record, columns)
                    except RowError as error:  # e.g. an empty scenario: the teacher could not have seen this row
                        skipped[f"unusable ({error})"] += 1
                        continue
                    system, user, assistant = (m["content"] for m in out["messages"])
                    messages.write(dumps({"messages": out["messages"]}) + "\n")
                    prompt_completion.write(
                        dumps({"prompt": out["messages"][:2], "completion": out["messages"][2:]}) + "\n"
                    )
                    alpaca.write(dumps({"instruction": system, "input": user, "output": assistant}) + "\n")
                    yield out

            exported = write_rows(tmp / PARQUET, records(), "parquet")
        if not exported:  # a parquet file without a single row has no schema: `datasets` cannot load it
            (tmp / PARQUET).unlink()
            log.warning(
                "export: no row to export (skipped: %s); %s holds only the card", dict(skipped) or "none", self.dir
            )
        (tmp / "dataset_info.json").write_text(json.dumps(self._dataset_info(), indent=2) + "\n", encoding="utf-8")
        write_card(tmp / "README.md", record, self, exported, dict(skipped))
        shutil.rmtree(self.dir, ignore_errors=True)
        tmp.replace(self.dir)
        log.info("exported %d rows to %s (skipped: %s)", exported, self.dir, dict(skipped) or "none")
        return {"dir": self.dir.name, "rows": exported, "skipped": dict(skipped)}

    def _skip_reason(self, row: dict, columns: dict) -> str | None:
        if columns["verified"] in row and row[columns["verified"]] is not True:
            return "not verified"
        if columns["correct"] in row and row[columns["correct"]] is not True and not self.include_incorrect:
            return "answer not correct"
        if self.think_tags and not (row.get(columns["answer"]) or "").strip():
            return "no final answer"
        return None

    def _turns(self, row: dict, teacher, columns: dict) -> list[dict]:
        """system, user (the teacher's own prompt for this row) and the assistant turn to train on."""
        system, user = teacher.messages(row)
        if self.system_prompt is not None:
            system = {"role": "system", "content": self.system_prompt}
        reasoning, answer = row[columns["reasoning"]], row.get(columns["answer"])
        return [system, user, {"role": "assistant", "content": assistant_turn(reasoning, answer, self.think_tags)}]

    def _record(self, row: dict, teacher, record: RunRecord, columns: dict) -> dict:
        """One exported row: what the teacher saw, what it wrote, and the chat turns for training."""
        if isinstance(teacher, QAReasonDistill):
            return self._question_record(row, teacher, columns)
        documents = shown_documents(row, record) or rebuilt_documents(teacher, row, record)
        turns = self._turns(row, teacher, columns)
        reasoning = row[columns["reasoning"]]
        out = {"id": row["id"]}
        if columns["source_id"] in row:
            out["source_id"] = row[columns["source_id"]]
        out.update(
            question=row[columns["question"]],
            scenario=row.get(teacher.inputs["scenario"]),
            documents=[d["text"] for d in documents],
            positive_index=next(d["number"] for d in documents if d["positive"]),
            hard_negative_ids=[d["doc_id"] for d in documents if not d["positive"]],
        )
        for role in ("reference_answer", "answer", "verdict"):
            if columns[role] in row:
                out[role] = row[columns[role]]
        out.update(reasoning=reasoning, messages=turns)
        return out

    def _question_record(self, row: dict, teacher: QAReasonDistill, columns: dict) -> dict:
        """One exported labelled question: options, gold, the documents shown, the kept path."""
        documents, _ = teacher.shuffled_documents(row)
        options = row.get(teacher.inputs["options"]) or None
        out = {
            "id": row["id"],
            "question": row[columns["question"]],
            "options": None
            if options is None
            else [{"letter": letter, "text": text} for letter, text in options.items()],
            "gold": row.get(GOLD),
            "gold_text": row.get(GOLD_TEXT),
            "documents": [document["text"] for document in documents],
        }
        for role in ("document_ids", "document_scores", "answer", "correct", "paths"):
            if columns[role] in row:
                out[role] = row[columns[role]]
        out.update(reasoning=row[columns["reasoning"]], messages=self._turns(row, teacher, columns))
        return out

    def _dataset_info(self) -> dict:
        """LLaMA-Factory's `dataset_info.json`: one entry per jsonl file, named `<name>_<format>`."""
        return {
            f"{self.dataset_name}_messages": {
                "file_name": MESSAGES,
                "formatting": "sharegpt",
                "columns": {"messages": "messages"},
                "tags": {
                    "role_tag": "role",
                    "content_tag": "content",
                    "user_tag": "user",
                    "assistant_tag": "assistant",
                    "system_tag": "system",
                },
            },
            f"{self.dataset_name}_alpaca": {
                "file_name": ALPACA,
                "formatting": "alpaca",
                "columns": {"prompt": "instruction", "query": "input", "response": "output"},
            },
        }


def assistant_turn(reasoning: str, answer: str | None, think_tags: bool) -> str:
    """The teacher's text as it is, or `<think>reasoning</think>` then the final answer (for a text
    that ends in an `<answer>` tag: `<think>...</think>` then that tag, with the choice read from it)."""
    if not think_tags:
        return reasoning
    tags = list(_ANSWER_TAG.finditer(reasoning))
    if tags:
        thought = re.sub(r"</?think>", "", reasoning[: tags[-1].start()], flags=re.IGNORECASE).strip()
        return f"<think>\n{thought}\n</think>\n<answer>{answer.strip()}</answer>"
    return f"<think>\n{reasoning_without_answer(reasoning, answer)}\n</think>\n\n{answer.strip()}"


def reasoning_without_answer(reasoning: str, answer: str) -> str:
    """The reasoning without its closing answer (the last line stating it, and a bare heading before it)."""
    text = reasoning.rstrip()
    found = text.rfind(answer.strip())
    if found <= 0:
        return text
    lines = text[: text.rfind("\n", 0, found) + 1].rstrip().split("\n")
    if lines and ANSWER_HEADING.match(lines[-1]):
        lines.pop()
    body = "\n".join(lines).rstrip()
    return body or text


def _written_columns(record: RunRecord) -> set[str]:
    return {column for step in record.steps.values() for column in (step.get("outputs") or {}).values()}


def export_settings(node) -> dict:
    """An `export:` config node (or a saved one) as Export's keyword arguments (`enabled` left out)."""
    return {key: value for key, value in dict(node or {}).items() if key != "enabled"}


def main(argv: list[str]) -> int:
    """`rare export RUN_DIR [options]`: write the run's training-set files; prints their folder, returns the exit code.

    Options not given keep the run's own `export:` settings (its config.yaml), else the defaults.
    """
    parser = argparse.ArgumentParser(prog="rare export", description="Write the training-set files of a rare run dir.")
    parser.add_argument("run_dir", help="a run dir, e.g. outputs/2025-01-31/12-00-00")
    parser.add_argument("--dir", help="folder under the run dir for the files (default export)")
    parser.add_argument("--dataset-name", help="the card's title and the LLaMA-Factory entries' prefix")
    parser.add_argument(
        "--think-tags", action="store_true", default=None, help="assistant turn = <think>reasoning</think> + answer"
    )
    parser.add_argument("--system-prompt", help="replaces the teacher's system prompt in the exported turns")
    parser.add_argument(
        "--include-incorrect", action="store_true", default=None, help="also rows answer_check never got right"
    )
    args = parser.parse_args(argv)
    from rare.pipeline.progress import console

    given = {key: value for key, value in vars(args).items() if key != "run_dir" and value is not None}
    try:
        settings = {**export_settings(RunRecord(args.run_dir).config.get("export")), **given}
        result = Export(Path(args.run_dir).expanduser(), **settings).write()
    except RareError as error:
        console.print(f"[bold red]rare export:[/bold red] {error}", highlight=False, soft_wrap=True)
        return 2
    print(Path(args.run_dir).expanduser() / result["dir"])
    return 0
