"""The aiohttp application behind the local OpenAI-compatible test server.

`create_app(config)` builds an app serving chat completions, models, the
Files/Batch API and the `/_stats`, `/_config`, `/_reset`, `/_batches/finish` control endpoints.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from rare.testing.batches import BatchError
from rare.testing.faults import ERROR_STATUS, NOT_COMPLETION, NOT_COMPLETION_BODY, error_body, unit_interval
from rare.testing.rate_limits import RateLimits
from rare.testing.responder import prompt_key, prompt_tokens
from rare.testing.state import CREATED, MODELS, ServerConfig, ServerState

STATE = web.AppKey("state", ServerState)


def json_response(payload: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    """A compact JSON response."""
    body = json.dumps(payload).encode()
    return web.Response(body=body, status=status, headers=headers, content_type="application/json")


def error_response(
    status: int, message: str | None = None, type_: str | None = None, headers: dict | None = None
) -> web.Response:
    """An OpenAI-shaped error response."""
    return json_response(error_body(status, message, type_), status=status, headers=headers)


async def _json_body(request: web.Request) -> dict:
    try:
        body = await request.json()
    except ValueError as exc:
        raise _bad_request(f"invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise _bad_request("JSON body must be an object")
    return body


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps(error_body(400, message)), content_type="application/json")


def _sse(completion: dict, include_usage: bool) -> bytes:
    """The completion re-encoded as an SSE chunk stream ending in `data: [DONE]`."""
    base = {k: completion[k] for k in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"
    choice = completion["choices"][0]
    deltas = [{"role": "assistant", "content": ""}]
    deltas += [{"content": piece} for piece in choice["message"]["content"].splitlines(keepends=True)]
    chunks = [{**base, "choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": None}]} for d in deltas]
    last = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": choice["finish_reason"]}
    chunks.append({**base, "choices": [last]})
    if include_usage:
        chunks.append({**base, "choices": [], "usage": completion["usage"]})
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


async def _trickle(request: web.Request, payload: bytes, content_type: str, duration: float) -> web.StreamResponse:
    """Send `payload` in small pieces spread over `duration` seconds."""
    response = web.StreamResponse(headers={"Content-Type": content_type})
    response.content_length = len(payload)
    await response.prepare(request)
    pieces = 10
    size = max(1, -(-len(payload) // pieces))
    for start in range(0, len(payload), size):
        await response.write(payload[start : start + size])
        await asyncio.sleep(duration / pieces)
    await response.write_eof()
    return response


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions, with latency and fault injection."""
    state = request.app[STATE]
    body = await _json_body(request)
    if not isinstance(body.get("messages"), list):
        return error_response(400, "'messages' must be a list")
    config = state.config
    state.seq += 1
    seq = state.seq
    key = prompt_key(body["messages"])
    limits = state.limits
    charged = 0
    if limits.active:
        wait, charged = limits.admit(
            prompt_tokens(body["messages"]), body.get("max_completion_tokens") or body.get("max_tokens")
        )
        if wait > 0:
            state.stats.rate_limited += 1
            state.stats.record_chat(key, body.get("model"), 429, "rate_limit", "http")
            headers = {**limits.headers(), **RateLimits.retry_headers(wait)}
            return error_response(429, "Rate limit reached. Please retry later.", "requests", headers=headers)
    fault = state.picker.pick(seq, key)
    status = None if fault == "drop" else ERROR_STATUS.get(fault, 200)
    state.stats.record_chat(key, body.get("model"), status, fault, "http")

    delay = config.latency_s + config.delay_prompt_keys.get(key, 0.0)  # one row held back (a slow answer)
    if config.jitter_s:
        delay += config.jitter_s * unit_interval(config.seed, seq, "jitter")
    if fault == "timeout":
        delay += config.timeout_sleep_s
    if delay > 0:
        await asyncio.sleep(delay)

    if fault == "drop":
        # Abort the socket so the client sees EOF instead of any HTTP response; aiohttp then
        # quietly treats the write of the placeholder response as a client disconnect.
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=204)
    if status != 200:
        headers = {"Retry-After": f"{config.retry_after_s:g}"} if fault == "429" else None
        return error_response(status, headers=headers)
    if fault == NOT_COMPLETION:
        return json_response(NOT_COMPLETION_BODY)
    try:
        completion = state.complete(body, fault)
    except Exception as exc:  # a plugged-in responder may fail; report it like OpenAI would
        return error_response(500, f"responder failed: {exc!r}")
    usage = completion["usage"]
    state.stats.tokens += usage["total_tokens"]
    headers = None
    if limits.active:
        limits.settle(charged, usage["prompt_tokens"], usage["completion_tokens"])
        headers = limits.headers()
    if body.get("stream"):
        options = body.get("stream_options") or {}
        payload, content_type = _sse(completion, bool(options.get("include_usage"))), "text/event-stream"
    else:
        payload, content_type = json.dumps(completion).encode(), "application/json"
    if fault == "trickle":
        return await _trickle(request, payload, content_type, config.trickle_s)
    return web.Response(body=payload, content_type=content_type, headers=headers)


async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models."""
    data = [{"id": m, "object": "model", "created": CREATED, "owned_by": "rare-testing"} for m in MODELS]
    return json_response({"object": "list", "data": data})


async def upload_file(request: web.Request) -> web.Response:
    """POST /v1/files (multipart: `purpose` and `file`)."""
    form = await request.post()
    upload = form.get("file")
    if not isinstance(upload, web.FileField):
        return error_response(400, "multipart field 'file' is required")
    batches = request.app[STATE].batches
    meta = batches.add_file(upload.file.read(), upload.filename or "upload.jsonl", str(form.get("purpose", "batch")))
    return json_response(meta)


async def get_file(request: web.Request) -> web.Response:
    """GET /v1/files/{file_id}."""
    return json_response(request.app[STATE].batches.get_file(request.match_info["file_id"]).meta)


async def get_file_content(request: web.Request) -> web.Response:
    """GET /v1/files/{file_id}/content."""
    stored = request.app[STATE].batches.get_file(request.match_info["file_id"])
    return web.Response(body=stored.content, content_type="application/octet-stream")


async def delete_file(request: web.Request) -> web.Response:
    """DELETE /v1/files/{file_id}."""
    return json_response(request.app[STATE].batches.delete_file(request.match_info["file_id"]))


async def create_batch(request: web.Request) -> web.Response:
    """POST /v1/batches."""
    state = request.app[STATE]
    body = await _json_body(request)
    if not isinstance(body.get("input_file_id"), str):
        return error_response(400, "'input_file_id' is required")
    batch = state.batches.create_batch(
        body["input_file_id"],
        str(body.get("endpoint", "")),
        str(body.get("completion_window", "24h")),
        body.get("metadata"),
        state.config.batch_delay_s,
    )
    return json_response(batch)


async def get_batch(request: web.Request) -> web.Response:
    """GET /v1/batches/{batch_id}."""
    return json_response(request.app[STATE].batches.get_batch(request.match_info["batch_id"]))


async def cancel_batch(request: web.Request) -> web.Response:
    """POST /v1/batches/{batch_id}/cancel."""
    return json_response(request.app[STATE].batches.cancel_batch(request.match_info["batch_id"]))


async def control_stats(request: web.Request) -> web.Response:
    """GET /_stats."""
    return json_response(request.app[STATE].stats.snapshot())


async def control_config(request: web.Request) -> web.Response:
    """POST /_config: update config fields; answers with the resulting config."""
    body = await _json_body(request)
    try:
        return json_response(request.app[STATE].configure(body))
    except (ValueError, TypeError, ImportError, AttributeError) as exc:
        return error_response(400, str(exc))


async def control_reset(request: web.Request) -> web.Response:
    """POST /_reset: clear counters, files and batches."""
    request.app[STATE].reset()
    return json_response({"ok": True})


async def control_finish_batches(request: web.Request) -> web.Response:
    """POST /_batches/finish: every unfinished batch completes on its next read."""
    return json_response({"finished": request.app[STATE].batches.finish_now()})


@web.middleware
async def _count_and_authorize(request: web.Request, handler) -> web.StreamResponse:
    if request.path.startswith("/_"):
        return await handler(request)
    state = request.app[STATE]
    stats = state.stats
    resource = request.match_info.route.resource
    stats.total += 1
    stats.endpoints[f"{request.method} {resource.canonical if resource else request.path}"] += 1
    expected = state.config.require_api_key
    if expected is not None and request.headers.get("Authorization") != f"Bearer {expected}":
        return error_response(401, "Incorrect API key provided.", "invalid_request_error")
    stats.in_flight += 1
    stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
    try:
        return await handler(request)
    except BatchError as exc:
        return error_response(exc.status, exc.message)
    finally:
        stats.in_flight -= 1


def create_app(config: ServerConfig | None = None) -> web.Application:
    """Build the test server's aiohttp application."""
    app = web.Application(middlewares=[_count_and_authorize], client_max_size=256 * 1024**2)
    app[STATE] = ServerState(config or ServerConfig())
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/files", upload_file)
    app.router.add_get("/v1/files/{file_id}", get_file)
    app.router.add_delete("/v1/files/{file_id}", delete_file)
    app.router.add_get("/v1/files/{file_id}/content", get_file_content)
    app.router.add_post("/v1/batches", create_batch)
    app.router.add_get("/v1/batches/{batch_id}", get_batch)
    app.router.add_post("/v1/batches/{batch_id}/cancel", cancel_batch)
    app.router.add_get("/_stats", control_stats)
    app.router.add_post("/_config", control_config)
    app.router.add_post("/_reset", control_reset)
    app.router.add_post("/_batches/finish", control_finish_batches)
    return app
