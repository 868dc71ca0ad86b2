"""Batch mode: requests go through the provider's batch API (OpenAI-style /v1/files + /v1/batches).

`Batcher.submit(custom_id, body)` is awaited like a call: the request joins the batch being
collected, which is uploaded as JSONL when it holds `max_requests` requests or its first
request has waited `max_wait_s`. Each batch id is appended, with its custom ids, to
`batches.jsonl` in the run dir before anything waits on it; the batch is polled every
`poll_s` and each request's answer (or its error line) resolves its caller.

After a restart, a request whose custom id belongs to a recorded batch that has not failed
waits on that batch again (polling resumes) instead of being uploaded a second time. The
custom id is the response-cache key: the same request always gets the same id.
"""

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from rare.errors import RowError
from rare.llm import litellm  # imported on first use
from rare.llm.retry import is_transient, wait_for_retry

log = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
STATE_FILE = "batches.jsonl"
FAILED_STATUSES = ("failed", "expired", "cancelled", "lost")  # their requests are submitted again
API_RETRIES = 5  # retries of a transient error while uploading, creating, polling or downloading


@dataclass
class BatchWatch:
    """One submitted batch and the callers waiting on its requests."""

    batch_id: str
    custom_ids: set[str]
    futures: dict[str, asyncio.Future] = field(default_factory=dict)
    results: dict[str, dict | BaseException] | None = None  # set once the batch has finished
    task: asyncio.Task | None = None


class Batcher:
    """Collects requests into batches, submits them through litellm and waits for their answers.

    Args:
        api_base / api_key: where the batch API lives (None = litellm's OpenAI default).
        max_requests: requests per batch at most.
        max_wait_s: how long the first request of a batch waits for more before it is sent.
        poll_s: seconds between status checks of a running batch.
        state_dir: folder of `batches.jsonl` (the run dir); None = batches are not recorded.
        on_results: called with [(custom_id, response body)] of every finished batch (the cache).
    """

    def __init__(
        self,
        api_base: str | None,
        api_key: str | None,
        max_requests: int = 5000,
        max_wait_s: float = 2.0,
        poll_s: float = 10.0,
        state_dir: str | os.PathLike | None = None,
        on_results: Callable[[list[tuple[str, dict]]], None] | None = None,
        timeout_s: float = 600.0,
    ):
        self.api_base, self.api_key = api_base, api_key
        self.max_requests = max(1, int(max_requests))
        self.max_wait_s = float(max_wait_s)
        self.poll_s = float(poll_s)
        self.state_path = Path(state_dir) / STATE_FILE if state_dir else None
        self.on_results = on_results
        self.timeout_s = float(timeout_s)
        self.submitted = 0  # batches created by this batcher
        self.resumed = 0  # recorded batches this batcher waited on again
        self._pending: dict[str, tuple[dict, asyncio.Future]] = {}
        self._flush_timer: asyncio.TimerHandle | None = None
        self._watches: dict[str, BatchWatch] = {}
        self._owner: dict[str, str] = {}  # custom_id -> batch_id of a recorded, not failed batch
        self._tasks: set[asyncio.Task] = set()
        self._load_state()

    # ---- the state file -------------------------------------------------------------------

    def _load_state(self) -> None:
        if self.state_path is None or not self.state_path.exists():
            return
        submitted: dict[str, list[str]] = {}
        finished: dict[str, str] = {}
        with open(self.state_path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a torn last line
                if record.get("event") == "submitted":
                    submitted[record["batch_id"]] = record["custom_ids"]
                elif record.get("event") == "finished":
                    finished[record["batch_id"]] = record.get("status", "")
        for batch_id, custom_ids in submitted.items():
            if finished.get(batch_id) in FAILED_STATUSES:
                continue
            self._watches[batch_id] = BatchWatch(batch_id, set(custom_ids))
            for custom_id in custom_ids:
                self._owner[custom_id] = batch_id

    def _record(self, record: dict) -> None:
        if self.state_path is None:
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps({**record, "time": round(time.time(), 3)}, separators=(",", ":")) + "\n").encode()
        descriptor = os.open(self.state_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, line)  # one write of one line: concurrent appends never interleave
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    # ---- submitting -----------------------------------------------------------------------

    async def submit(self, custom_id: str, body: dict) -> dict:
        """The response body for one request (a chat.completion object); raises its error."""
        batch_id = self._owner.get(custom_id)
        if batch_id is not None:
            future = self._wait_on(self._watches[batch_id], custom_id)
        elif custom_id in self._pending:
            future = self._pending[custom_id][1]  # the same request twice: ask once
        else:
            future = asyncio.get_running_loop().create_future()
            self._pending[custom_id] = (body, future)
            if len(self._pending) >= self.max_requests:
                self.flush()
            elif self._flush_timer is None:
                self._flush_timer = asyncio.get_running_loop().call_later(self.max_wait_s, self.flush)
        return await asyncio.shield(future)  # a cancelled row must not cancel a shared answer

    def flush(self) -> None:
        """Send what has been collected now."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if not self._pending:
            return
        items = self._pending
        self._pending = {}
        self._spawn(self._submit_batch(items))

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _submit_batch(self, items: dict[str, tuple[dict, asyncio.Future]]) -> None:
        lines = [
            json.dumps({"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}, ensure_ascii=False)
            for custom_id, (body, _) in items.items()
        ]
        content = ("\n".join(lines) + "\n").encode("utf-8")
        try:
            uploaded = await self._api(
                litellm.acreate_file,
                file=(f"rare-batch-{int(time.time())}.jsonl", content, "application/jsonl"),
                purpose="batch",
            )
            batch = await self._api(
                litellm.acreate_batch,
                completion_window="24h",
                endpoint=ENDPOINT,
                input_file_id=uploaded.id,
                metadata={"source": "rare"},
            )
        except Exception as error:
            for _, future in items.values():
                if not future.done():
                    future.set_exception(error)
            return
        self._record(
            {"event": "submitted", "batch_id": batch.id, "input_file_id": uploaded.id, "custom_ids": list(items)}
        )
        self.submitted += 1
        log.info("submitted batch %s with %d requests", batch.id, len(items))
        watch = BatchWatch(batch.id, set(items))
        self._watches[batch.id] = watch
        for custom_id, (_, future) in items.items():
            self._owner[custom_id] = batch.id
            watch.futures[custom_id] = future
        watch.task = self._spawn(self._poll(watch, first_wait=True))

    def _wait_on(self, watch: BatchWatch, custom_id: str) -> asyncio.Future:
        """A future for `custom_id` in a batch submitted earlier (maybe by a previous run)."""
        future = watch.futures.get(custom_id)
        if future is None:
            future = watch.futures[custom_id] = asyncio.get_running_loop().create_future()
        if watch.results is not None:
            _resolve(future, watch.results.get(custom_id, _missing(watch.batch_id)))
        elif watch.task is None:
            self.resumed += 1
            log.info("resuming batch %s instead of submitting its requests again", watch.batch_id)
            watch.task = self._spawn(self._poll(watch, first_wait=False))
        return future

    # ---- polling --------------------------------------------------------------------------

    async def _poll(self, watch: BatchWatch, first_wait: bool) -> None:
        if first_wait:
            await asyncio.sleep(self.poll_s)
        try:
            while True:
                batch = await self._api(litellm.aretrieve_batch, batch_id=watch.batch_id)
                if batch.status in ("completed", "failed", "expired", "cancelled"):
                    break
                await asyncio.sleep(self.poll_s)
            results = await self._collect(batch)
            status = batch.status
        except Exception as error:  # the batch cannot be read any more: its requests are sent again next run
            reason = f"batch {watch.batch_id} could not be read: {type(error).__name__}: {str(error)[:300]}"
            results, status = {}, "lost"
            self._finish(watch, results, status, reason)
            return
        reason = _batch_problem(batch)
        self._finish(watch, results, status, reason)

    async def _collect(self, batch) -> dict[str, dict | BaseException]:
        results: dict[str, dict | BaseException] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = await self._api(litellm.afile_content, file_id=file_id)
            for line in _content_bytes(content).decode("utf-8", "replace").splitlines():
                if line.strip():
                    custom_id, outcome = _parse_line(line)
                    if custom_id is not None:
                        results[custom_id] = outcome
        return results

    def _finish(self, watch: BatchWatch, results: dict, status: str, reason: str | None) -> None:
        self._record({"event": "finished", "batch_id": watch.batch_id, "status": status})
        answered = [(custom_id, body) for custom_id, body in results.items() if isinstance(body, dict)]
        if self.on_results is not None and answered:
            try:
                self.on_results(answered)
            except Exception:  # the cache is an optimization: never fail answers because of it
                log.exception("storing the answers of batch %s failed", watch.batch_id)
        missing = RowError(reason) if reason else _missing(watch.batch_id)
        watch.results = results
        for custom_id, future in watch.futures.items():
            _resolve(future, results.get(custom_id, missing))
        if status in FAILED_STATUSES:  # later requests for these ids are submitted afresh
            for custom_id in watch.custom_ids:
                if self._owner.get(custom_id) == watch.batch_id:
                    del self._owner[custom_id]
        log.info("batch %s %s: %d answers", watch.batch_id, status, len(answered))

    # ---- the API, with retries ------------------------------------------------------------

    async def _api(self, function, **kwargs):
        retrying = AsyncRetrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(API_RETRIES + 1),
            wait=wait_for_retry(1.0, 60.0),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await function(
                    **kwargs,
                    custom_llm_provider="openai",
                    api_base=self.api_base,
                    api_key=self.api_key,
                    timeout=self.timeout_s,
                    max_retries=0,
                )

    async def aclose(self) -> None:
        """Stop waiting (the batches keep running at the provider and are resumed next time)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _missing(batch_id: str) -> RowError:
    return RowError(f"batch {batch_id} returned no answer for this request")


def _resolve(future: asyncio.Future, outcome) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _content_bytes(content) -> bytes:
    for attribute in ("content", "read"):
        value = getattr(content, attribute, None)
        if isinstance(value, bytes):
            return value
        if callable(value):
            return value()
    return bytes(content)


def _parse_line(line: str) -> tuple[str | None, dict | BaseException]:
    """(custom_id, response body or the RowError saying why that request failed)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None, RowError("unreadable batch output line")
    custom_id = record.get("custom_id")
    response = record.get("response") or {}
    body = response.get("body")
    status = response.get("status_code")
    if record.get("error") or status != 200 or not isinstance(body, dict) or not body.get("choices"):
        error = record.get("error") or (body.get("error") if isinstance(body, dict) else None) or {}
        message = error.get("message") if isinstance(error, dict) else str(error)
        return custom_id, RowError(f"the batch request failed (status {status}): {message or 'no answer'}")
    return custom_id, body


def _batch_problem(batch) -> str | None:
    """Why a finished batch left requests unanswered, if it did not complete."""
    if batch.status == "completed":
        return None
    errors = getattr(batch, "errors", None)
    data = getattr(errors, "data", None) or (errors.get("data") if isinstance(errors, dict) else None) or []
    details = "; ".join(
        str(getattr(e, "message", None) or (e.get("message") if isinstance(e, dict) else e)) for e in data[:3]
    )
    return f"batch {batch.id} ended {batch.status}" + (f": {details}" if details else "")
