"""In-memory OpenAI Files and Batch API state for the local test server.

A batch is `validating` for the first quarter of its delay, then `in_progress`,
then `completed`. Progress is computed lazily when the batch is read, so no
background task is needed; the output file is produced on the first read after
the delay has passed.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from rare.testing.faults import error_body

# (request body) -> (HTTP status, response body) for one batch line.
LineHandler = Callable[[dict], tuple[int, dict]]

CHAT_ENDPOINT = "/v1/chat/completions"
_TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})


class BatchError(Exception):
    """A client error in a Files/Batch API call; maps to an HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class StoredFile:
    """One uploaded or generated file."""

    meta: dict
    content: bytes


@dataclass
class Batch:
    """One batch and the parsed request lines it will run."""

    meta: dict
    lines: list[dict]
    due: float
    started: float
    errors: list[dict] = field(default_factory=list)


def _short_hash(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]


class BatchStore:
    """Files and batches held in memory; `handle_line` answers each batch request."""

    def __init__(self, handle_line: LineHandler):
        self.handle_line = handle_line
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, Batch] = {}

    def add_file(self, content: bytes, filename: str, purpose: str) -> dict:
        """Store a file and return its OpenAI file object."""
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        meta = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
        }
        self.files[file_id] = StoredFile(meta, content)
        return meta

    def get_file(self, file_id: str) -> StoredFile:
        """The stored file, or BatchError(404)."""
        stored = self.files.get(file_id)
        if stored is None:
            raise BatchError(404, f"No such File object: {file_id}")
        return stored

    def delete_file(self, file_id: str) -> dict:
        """Forget a file; returns the OpenAI deletion object."""
        self.get_file(file_id)
        del self.files[file_id]
        return {"id": file_id, "object": "file", "deleted": True}

    def create_batch(
        self, input_file_id: str, endpoint: str, completion_window: str, metadata: dict | None, delay_s: float
    ) -> dict:
        """Validate the input file and register a batch that completes after `delay_s`."""
        if endpoint != CHAT_ENDPOINT:
            raise BatchError(400, f"Unsupported endpoint {endpoint!r}; only {CHAT_ENDPOINT} is available")
        content = self.get_file(input_file_id).content
        lines, errors = [], []
        for number, raw in enumerate(content.decode("utf-8", "replace").splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
                if not isinstance(line, dict) or not isinstance(line.get("body"), dict) or "custom_id" not in line:
                    raise ValueError("each line needs custom_id and an object body")
            except ValueError as exc:
                errors.append({"code": "invalid_json_line", "message": str(exc), "param": None, "line": number})
                continue
            lines.append(line)
        now = time.time()
        batch_id = f"batch_{uuid.uuid4().hex[:24]}"
        meta = {
            "id": batch_id,
            "object": "batch",
            "endpoint": endpoint,
            "errors": None,
            "input_file_id": input_file_id,
            "completion_window": completion_window,
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": int(now),
            "in_progress_at": None,
            "expires_at": int(now) + 86400,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": metadata,
        }
        batch = Batch(meta, lines, due=time.monotonic() + max(0.0, delay_s), started=time.monotonic(), errors=errors)
        self.batches[batch_id] = batch
        if errors or not lines:
            meta["status"] = "failed"
            meta["failed_at"] = int(now)
            errors = errors or [{"code": "empty_file", "message": "no requests", "param": None, "line": None}]
            meta["errors"] = {"object": "list", "data": errors}
        return dict(meta)

    def get_batch(self, batch_id: str) -> dict:
        """The batch object, advanced to the state its age implies."""
        batch = self._batch(batch_id)
        self._advance(batch)
        return dict(batch.meta)

    def cancel_batch(self, batch_id: str) -> dict:
        """Cancel a batch that has not finished; finished batches are returned unchanged."""
        batch = self._batch(batch_id)
        self._advance(batch)
        if batch.meta["status"] not in _TERMINAL:
            now = int(time.time())
            batch.meta.update(status="cancelled", cancelling_at=now, cancelled_at=now)
        return dict(batch.meta)

    def finish_now(self) -> int:
        """Make every unfinished batch due now (a test's "the provider is done"); returns how many."""
        now, count = time.monotonic(), 0
        for batch in self.batches.values():
            if batch.meta["status"] not in _TERMINAL:
                batch.due, count = min(batch.due, now), count + 1
        return count

    def _batch(self, batch_id: str) -> Batch:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise BatchError(404, f"No such Batch object: {batch_id}")
        return batch

    def _advance(self, batch: Batch) -> None:
        meta = batch.meta
        if meta["status"] in _TERMINAL:
            return
        now = time.monotonic()
        if now >= batch.due:
            self._complete(batch)
        elif now >= batch.started + (batch.due - batch.started) / 4 and meta["status"] == "validating":
            meta.update(status="in_progress", in_progress_at=int(time.time()))

    def _complete(self, batch: Batch) -> None:
        outputs, failures = [], []
        for line in batch.lines:
            body = line["body"]
            if line.get("method", "POST") != "POST" or line.get("url", CHAT_ENDPOINT) != CHAT_ENDPOINT:
                status, payload = 400, error_body(400, "unsupported method or url")
            else:
                status, payload = self.handle_line(body)
            record = {
                "id": f"batch_req_{_short_hash(batch.meta['id'], line['custom_id'])}",
                "custom_id": line["custom_id"],
                "response": {"status_code": status, "request_id": _short_hash(line["custom_id"]), "body": payload},
                "error": None,
            }
            (outputs if status == 200 else failures).append(record)
        now = int(time.time())
        meta = batch.meta
        meta.update(
            status="completed",
            in_progress_at=meta["in_progress_at"] or now,
            finalizing_at=now,
            completed_at=now,
            request_counts={"total": len(batch.lines), "completed": len(outputs), "failed": len(failures)},
        )
        meta["output_file_id"] = self._write_output(meta["id"], "output", outputs)
        meta["error_file_id"] = self._write_output(meta["id"], "error", failures) if failures else None

    def _write_output(self, batch_id: str, kind: str, records: list[dict]) -> str:
        content = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
        return self.add_file(content, f"{batch_id}_{kind}.jsonl", "batch_output")["id"]
