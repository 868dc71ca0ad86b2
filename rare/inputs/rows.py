"""Reading the input rows: json, jsonl, parquet or csv, documents with a `text` field, or (the
qa recipe, `data.questions`) labelled questions normalized by `rare.inputs.questions`.

Every row gets a stable id: the input's own id field when present (duplicates refused),
otherwise a hash of its text, so reordering the input never changes ids.
"""

import csv
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rare.errors import InputError
from rare.inputs.questions import question_normalizer
from rare.rundir.manifest import sha256_of_file

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
SHOWN_PROBLEMS = 5


@dataclass
class InputSummary:
    """What ingesting the input found; goes into the manifest."""

    path: str
    sha256: str
    rows: int = 0
    skipped: list[dict] = field(default_factory=list)
    columns: set[str] = field(default_factory=set)


def _raw_rows(path: Path, kind: str) -> Iterator[tuple[int, object]]:
    """(line or row number, parsed row or the exception that stopped parsing it)."""
    if kind == "jsonl":
        with open(path, "rb") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line.decode("utf-8"))
                except UnicodeDecodeError:
                    yield number, ValueError("the line is not valid UTF-8")
                except json.JSONDecodeError as error:
                    yield number, ValueError(f"the line is not valid JSON ({error.msg})")
    elif kind == "json":
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InputError(f"{path} is not valid JSON: {error}. Fix the file or convert it to jsonl.") from error
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise InputError(f"{path} must hold a JSON list of objects, got a {type(data).__name__}")
        yield from enumerate(data, 1)
    elif kind == "parquet":
        import pyarrow.parquet as pq

        number = 0
        for batch in pq.ParquetFile(path).iter_batches():
            for row in batch.to_pylist():
                number += 1
                yield number, row
    else:
        with open(path, encoding="utf-8", newline="") as handle:
            for number, row in enumerate(csv.DictReader(handle), 2):
                yield number, row


def content_id(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _problem(row, text_field: str) -> str | None:
    if isinstance(row, Exception):
        return str(row)
    if not isinstance(row, dict):
        return f"expected an object with a '{text_field}' field, got {type(row).__name__}"
    if text_field not in row or row[text_field] is None:
        return f"no '{text_field}' field (fields: {sorted(row)[:8]})"
    if not isinstance(row[text_field], str):
        return f"'{text_field}' must be a string, got {type(row[text_field]).__name__}: {str(row[text_field])[:40]!r}"
    if not row[text_field].strip():
        return f"'{text_field}' is empty"
    return None


def read_configured_input(data):
    """`read_input` with the `data:` settings of a run (input, fields, strict, limit, questions)."""
    questions = data.get("questions")
    if questions:  # labelled questions: the question is the row's text, the rest is normalized
        normalize = question_normalizer(**questions)
        return read_input(
            data.input, questions.question_field, data.id_field, data.strict, data.get("limit"), normalize
        )
    return read_input(data.input, data.text_field, data.id_field, data.strict, data.get("limit"))


def read_input(
    path: str,
    text_field: str = "text",
    id_field: str = "id",
    strict: bool = False,
    limit: int | None = None,
    normalize: Callable[[dict], dict] | None = None,
):
    """Yield normalized rows (`id` first) and fill an InputSummary as it goes.

    Returns (summary, iterator). Unusable rows are skipped and listed in `summary.skipped`,
    or refused under `strict`; duplicate ids are always refused. `limit` keeps the first rows only.
    `normalize` turns a usable row into the columns the steps read (raising ValueError with the
    reason for a row it refuses); without it `text_field` is renamed to `text`.
    """
    source = Path(path).expanduser()
    if not source.is_file():
        raise InputError(
            f"input file not found: {source}. Point data.input at a .jsonl, .json, .parquet or .csv file "
            f"(e.g. rare data.input=/path/docs.jsonl)."
        )
    kind = FORMATS.get(source.suffix.lower())
    if kind is None:
        raise InputError(f"cannot read {source}: use one of {', '.join(sorted(FORMATS))} files")
    summary = InputSummary(path=str(source), sha256=sha256_of_file(source))

    def rows() -> Iterator[dict]:
        first_row: dict[str, int] = {}
        copies: Counter[str] = Counter()
        columns: set[str] | None = None
        for number, row in _raw_rows(source, kind):
            if limit is not None and summary.rows >= limit:
                break
            problem = _problem(row, text_field)
            if problem is None and normalize is not None:
                try:
                    fields = normalize(row)
                except ValueError as error:
                    problem = str(error)
            if problem:
                if strict:
                    raise InputError(
                        f"{source}, row {number}: {problem}. Fix the row, or set data.strict=false to skip such rows."
                    )
                own_id = row.get(id_field) if isinstance(row, dict) else None
                summary.skipped.append(
                    {"line": number, "reason": problem, **({"id": str(own_id)} if own_id not in (None, "") else {})}
                )
                continue
            if row.get(id_field) not in (None, ""):
                row_id = str(row[id_field])
                if row_id in first_row:
                    raise InputError(
                        f"{source}: duplicate {id_field} {row_id!r} at rows {first_row[row_id]} and {number}. "
                        f"Ids must be unique; remove the '{id_field}' field to let rare derive ids from the text."
                    )
                first_row[row_id] = number
            else:
                row_id = content_id(row[text_field])
                copies[row_id] += 1
                if copies[row_id] > 1:
                    row_id = f"{row_id}-{copies[row_id]}"
            source_fields = fields if normalize is not None else row
            normalized = {"id": row_id, **{k: v for k, v in source_fields.items() if k not in ("id", id_field)}}
            if normalize is None and text_field != "text" and "text" not in normalized:
                normalized["text"] = normalized.pop(text_field)
            columns = set(normalized) if columns is None else columns & set(normalized)
            summary.rows += 1
            yield normalized
        summary.columns = columns or set()
        if summary.rows == 0:
            detail = (
                f"; {len(summary.skipped)} rows were unusable, e.g. {summary.skipped[0]}" if summary.skipped else ""
            )
            raise InputError(f"{source} has no usable rows{detail}")

    return summary, rows()
