"""Reading what a run wrote: its saved config, manifest, step files and failures, and the
numbered documents its teacher was shown for a row (as the row records them)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

from rare.errors import ConfigError, RareError
from rare.pipeline.build import locate
from rare.pipeline.step_contract import StepContext
from rare.pipeline.step_run import DROPPED_FILE
from rare.rundir.manifest import MANIFEST, Manifest
from rare.rundir.partial import finished_rows
from rare.storage.journal import Journal
from rare.storage.step_storage import StepStorage

CONFIG, FAILURES, DRY_RUN = "config.yaml", "failed.jsonl", "dry_run.json"


class NotARunDir(RareError):
    """The folder given is not one a `rare` run wrote."""


class RunRecord:
    """One run dir, read-only. `steps` are the enabled steps' configs by name, in run order."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        if not (self.path / CONFIG).is_file():
            raise NotARunDir(self._not_a_run_dir(CONFIG))
        self.config: dict = OmegaConf.to_container(OmegaConf.load(self.path / CONFIG))
        self.steps: dict[str, dict] = {k: v for k, v in (self.config.get("steps") or {}).items() if v}
        self.storage = self._storage()

    def _storage(self) -> StepStorage:
        """The step files' location; a run whose step files sat in its run dir is read wherever it is now."""
        storage = self.config.get("storage") or {}
        cache_path = Path(str(storage.get("cache_path", self.path)))
        if cache_path == Path(str((self.config.get("paths") or {}).get("output_dir", ""))) or not cache_path.exists():
            cache_path = self.path
        file_format = storage.get("format", storage.get("cache_type", "jsonl"))  # cache_type: run dirs before `format`
        naming = storage.get("naming", "numbered")  # run dirs from before step names have none
        step_storage = StepStorage(str(cache_path), storage.get("file_name_prefix", "rare"), file_format, naming)
        step_storage.name_steps(list(self.steps))
        return step_storage

    def _not_a_run_dir(self, missing: str) -> str:
        return (
            f"{self.path} is not a rare run dir (it has no {missing}); pass the folder a `rare` run wrote, "
            "e.g. outputs/2025-01-31/12-00-00"
        )

    def manifest(self) -> Manifest:
        """The run's manifest.json, as the runner last wrote it (after the input and after each step)."""
        path = self.path / MANIFEST
        if not path.is_file():
            if (self.path / DRY_RUN).is_file():
                raise NotARunDir(f"{self.path} holds a dry run ({DRY_RUN}): it ran no step")
            raise NotARunDir(
                f"{self.path} has no {MANIFEST} yet: the run is starting (it writes one once its input is read); "
                "try again in a moment"
            )
        return Manifest.read(path)

    def step_index(self, name: str) -> int:
        """The step's number in the run (`..._step{N}` with numbered step files); 0 is the input."""
        return list(self.steps).index(name) + 1

    def rows(self, step: int) -> Iterator[dict]:
        """A step's rows: its step file, or while it runs, the rows it has finished so far (each once)."""
        return finished_rows(self.storage, step)

    def last_step_with_rows(self) -> int:
        """The latest step that has written rows (0 when only the input has)."""
        for step in range(len(self.steps), 0, -1):
            if self.storage.is_done(step) or any(j.path.exists() for j in self.storage.journals(step)):
                return step
        return 0

    def failures(self) -> Counter:
        """Failed rows per (step, reason)."""
        return Counter((f.get("step"), f.get("reason")) for f in Journal(self.path / FAILURES))

    def dropped(self) -> Counter:
        """Rows a filter step removed on purpose, per (step, reason)."""
        return Counter((f.get("step"), f.get("reason")) for f in Journal(self.path / DROPPED_FILE))

    def column(self, role: str) -> str:
        """The column a step's output role was written to (its own name unless renamed)."""
        for step in self.steps.values():
            outputs = step.get("outputs") or {}
            if role in outputs:
                return outputs[role]
        return role

    def models(self) -> dict[str, str]:
        """The LLM model each step used, by step name."""
        return {name: step["llm"]["model"] for name, step in self.steps.items() if isinstance(step.get("llm"), dict)}

    def teacher(self):
        """The reasoning step (a ReasonDistill) rebuilt from the saved config, bound as it ran.

        Its LLM is a bare client that is never called: only its prompt and its seeded
        document order are used. None when the run has no such step.
        """
        from rare.operators.reason_distill import ReasonDistill

        for name, step in self.steps.items():
            try:
                is_teacher = issubclass(locate(step.get("_target_", "")), ReasonDistill)
            except (ConfigError, TypeError):
                continue
            if is_teacher:
                llm = {"_target_": "rare.llm.client.LLMClient", "model": step["llm"]["model"], "cache": False}
                op = instantiate({**step, "llm": llm}, _convert_="all")
                op.bind(StepContext(name=name, index=self.step_index(name), seed=int(self.config.get("seed", 0))))
                return op
        return None


def _by_id(row: dict, record: RunRecord) -> dict:
    """The row's documents by id: the positive (its source_id, or the row's id), then its negatives,
    each as (text, BM25 score)."""
    negatives = row.get(record.column("hard_negatives")) or []
    ids = row.get(record.column("hard_negative_ids")) or [None] * len(negatives)
    scores = row.get(record.column("hard_negative_scores")) or [None] * len(negatives)
    documents = {doc_id: (text, score) for text, doc_id, score in zip(negatives, ids, scores)}
    return {**documents, positive_id(row, record): (row.get(record.column("text"), ""), None)}


def positive_id(row: dict, record: RunRecord):
    """The id of the document the row's question was written from (also when it has several questions)."""
    return row.get(record.column("source_id")) or row["id"]


def shown_documents(row: dict, record: RunRecord) -> list[dict] | None:
    """The documents in the order the teacher saw them, from the row's own `shown_document_ids`:
    number, text, whether each is the positive, its id and BM25 score. None when the row does not
    record the order (the teacher has not seen it, or the run predates the column)."""
    ids, positive = row.get(record.column("shown_document_ids")), row.get(record.column("positive_index"))
    if not isinstance(ids, list) or positive is None:
        return None
    known = _by_id(row, record)
    shown = []
    for number, doc_id in enumerate(ids, 1):
        text, score = known.get(doc_id, ("", None))
        is_positive = number == int(positive)
        shown.append(
            {
                "number": number,
                "text": text,
                "positive": is_positive,
                "doc_id": doc_id,
                "score": None if is_positive else score,
            }
        )
    return shown


def rebuilt_documents(teacher, row: dict, record: RunRecord) -> list[dict]:
    """`shown_documents` for a row that does not record the order: rebuilt with the teacher's own
    seeded shuffle; a mismatch with the row's stored `positive_index` means the config no longer
    matches the run, and is refused."""
    documents, positive = teacher.shuffled_documents(row)
    stored = row.get(record.column("positive_index"))
    if stored is not None and int(stored) != positive:
        raise ConfigError(
            f"row {row['id']}: the teacher's document order rebuilt from {record.path / CONFIG} puts the positive "
            f"at {positive}, but the row says {stored}; the saved config no longer matches the rows (was "
            "config.yaml edited, or the seed or step name changed?)"
        )
    known = _by_id(row, record)
    shown = []
    for document in documents:
        is_positive = document["number"] == positive
        doc_id = (
            positive_id(row, record)
            if is_positive
            else next((i for i, (t, _) in known.items() if t == document["text"]), None)
        )
        score = None if is_positive else known.get(doc_id, (None, None))[1]
        shown.append(
            {
                "number": document["number"],
                "text": document["text"],
                "positive": is_positive,
                "doc_id": doc_id,
                "score": score,
            }
        )
    return shown
