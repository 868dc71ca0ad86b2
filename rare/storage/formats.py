"""Readers and writers for step files: jsonl, json and parquet, streamed where the format allows."""

import json
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import jsonlines

PARQUET_ROWS_PER_GROUP = 1000
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


def dumps(row: dict) -> str:
    """One canonical JSON line: same row, same bytes (for byte-identical reruns)."""
    text = json.dumps(row, ensure_ascii=False, sort_keys=False, separators=(",", ":"))
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate, decoded from a "\ud800" escape: not valid text in any file
            return _LONE_SURROGATE.sub("\ufffd", text)
    return text


def _write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(dumps(row) + "\n")
            count += 1
    return count


def _read_jsonl(path: Path) -> Iterator[dict]:
    # The standard parser, not jsonlines' default orjson: orjson turns integers beyond 64 bits into floats.
    with jsonlines.open(path, loads=json.loads) as reader:
        yield from reader


_DECODER = json.JSONDecoder()
_ID_FIRST = b'{"id":'  # how `dumps` starts a row whose id comes first (every row rare writes)


def line_id(line: bytes):
    """The `id` of one JSON line, or None. Only the id is decoded when it comes first."""
    if line.startswith(_ID_FIRST):
        try:
            return _DECODER.raw_decode(line.decode("utf-8"), len(_ID_FIRST))[0]
        except ValueError:  # not rare's compact separators (`{"id": ...`): parse it all
            pass
    try:
        return json.loads(line)["id"]
    except (ValueError, KeyError, TypeError):
        return None


def _read_jsonl_ids(path: Path) -> Iterator:
    with open(path, "rb") as handle:
        for line in handle:
            if line.strip():
                yield line_id(line)


def _read_parquet_ids(path: Path) -> Iterator:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(columns=["id"]):
        yield from batch.column(0).to_pylist()


def _write_json(path: Path, rows: Iterable[dict]) -> int:
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("[")
        for row in rows:
            handle.write(("\n" if count == 0 else ",\n") + dumps(row))
            count += 1
        handle.write("\n]\n")
    return count


def _read_json(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as handle:
        yield from json.load(handle)


def _write_parquet(path: Path, rows: Iterable[dict]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer, schema, batch, count = None, None, [], 0

    def flush():
        nonlocal writer, schema
        table = pa.Table.from_pylist(batch, schema=schema)
        if writer is None:
            schema = table.schema
            writer = pq.ParquetWriter(path, schema)
        writer.write_table(table)
        batch.clear()

    for row in rows:
        batch.append(row)
        count += 1
        if len(batch) >= PARQUET_ROWS_PER_GROUP:
            flush()
    if batch or writer is None:
        flush()
    writer.close()
    return count


def _read_parquet(path: Path) -> Iterator[dict]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches():
        yield from batch.to_pylist()


WRITERS = {"jsonl": _write_jsonl, "json": _write_json, "parquet": _write_parquet}
READERS = {"jsonl": _read_jsonl, "json": _read_json, "parquet": _read_parquet}
ID_READERS = {"jsonl": _read_jsonl_ids, "parquet": _read_parquet_ids}  # others: every row is read


def _atomically(path: Path, write: Callable[[Path], Any]) -> Any:
    """`write(temp file)`, then the temp file renamed to `path`: a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    result = write(tmp)
    tmp.replace(path)
    return result


def write_rows(path: Path, rows: Iterable[dict], file_type: str) -> int:
    """Write rows atomically; returns how many."""
    return _atomically(path, lambda tmp: WRITERS[file_type](tmp, rows))


def write_jsonl_lines(path: Path, lines: Iterable[bytes]) -> int:
    """Write JSONL lines that are already encoded (each ending in a newline) atomically; returns how many."""

    def write(tmp: Path) -> int:
        count = 0
        with open(tmp, "wb") as handle:
            for line in lines:
                handle.write(line)
                count += 1
        return count

    return _atomically(path, write)


def copy_file(source: Path, path: Path) -> None:
    """`source` copied to `path` atomically."""
    _atomically(path, lambda tmp: shutil.copyfile(source, tmp))


def read_rows(path: Path, file_type: str) -> Iterator[dict]:
    return READERS[file_type](Path(path))


def read_ids(path: Path, file_type: str) -> Iterator:
    """The rows' ids in file order, reading as little of each row as the format allows."""
    if file_type in ID_READERS:
        return ID_READERS[file_type](Path(path))
    return (row["id"] for row in read_rows(path, file_type))
