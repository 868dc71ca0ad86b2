"""Shared state of the local OpenAI-compatible test server.

`ServerConfig` holds the tunable behaviour; `ServerState` owns the config, the
fault picker, the request counters and the batch store, and builds completions.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from rare.testing.batches import BatchStore
from rare.testing.faults import ERROR_STATUS, FaultPicker, apply_content_fault, error_body, unit_interval
from rare.testing.rate_limits import RateLimits
from rare.testing.responder import (
    count_words,
    load_responder,
    prompt_key,
    prompt_tokens,
    request_digest,
    tagged_answer_content,
    wants_answer_tag,
)

# Fixed `created` timestamp so identical requests get byte-identical bodies.
CREATED = 1_700_000_000
MODELS = ("test-model",)


@dataclass
class ServerConfig:
    """Runtime behaviour of the test server; every field is settable via `/_config`."""

    latency_s: float = 0.0  # added before every chat answer
    jitter_s: float = 0.0  # extra uniform delay in [0, jitter_s), seeded per request
    faults: dict[str, float] = field(default_factory=dict)  # fault -> probability
    script: list[str] = field(default_factory=list)  # faults for the next chat requests; "ok" = none
    seed: int = 0  # seeds fault and jitter draws
    retry_after_s: float = 1.0  # Retry-After header value for the "429" fault
    timeout_sleep_s: float = 30.0  # how long the "timeout" fault stalls
    trickle_s: float = 2.0  # how long the "trickle" fault takes to send a response
    fail_prompt_keys: dict[str, str] = field(default_factory=dict)  # prompt_key -> fault, always
    delay_prompt_keys: dict[str, float] = field(default_factory=dict)  # prompt_key -> seconds added to its answer
    require_api_key: str | None = None  # if set, other bearer tokens get 401
    batch_delay_s: float = 1.0  # time from batch creation to completion
    responder: str | None = None  # "module:function" taking the request body, returning content
    max_records: int = 50_000  # recent chat request records kept for /_stats
    answer_key: dict[str, str] = field(default_factory=dict)  # question text -> gold, for prompts demanding <answer>
    correct_rate: float = 1.0  # chance that one sampled path of a keyed question names its gold
    rpm: float | None = None  # requests per minute the server accepts (429 above it); None = no limit
    tpm: float | None = None  # tokens per minute the server accepts; None = no limit
    rate_burst_s: float = 1.0  # a rate limit's bucket holds this many seconds of its rate
    tpm_counts: str = "used"  # what the token limit counts: used, or max_tokens (see rare.testing.rate_limits)
    long_answer_share: float = 0.0  # share of prompts (fixed per prompt) whose answer is long_answer_words longer
    long_answer_words: int = 400  # words added to a long answer

    def updated(self, changes: dict[str, Any]) -> ServerConfig:
        """A validated copy with `changes` applied; raises ValueError on bad input."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown config fields: {unknown}")
        new = dataclasses.replace(self, **changes)
        for name in ("latency_s", "jitter_s", "retry_after_s", "timeout_sleep_s", "trickle_s", "batch_delay_s"):
            value = float(getattr(new, name))
            if value < 0:
                raise ValueError(f"{name} must be >= 0")
            setattr(new, name, value)
        new.seed, new.max_records = int(new.seed), max(1, int(new.max_records))
        new.rate_burst_s, new.long_answer_share = float(new.rate_burst_s), float(new.long_answer_share)
        new.long_answer_words = int(new.long_answer_words)
        RateLimits(new.rpm, new.tpm, new.rate_burst_s, new.tpm_counts)  # refuses a bad tpm_counts
        new.faults, new.script = dict(new.faults), list(new.script)
        new.fail_prompt_keys = dict(new.fail_prompt_keys)
        new.delay_prompt_keys = {str(k): float(v) for k, v in new.delay_prompt_keys.items()}
        if any(v < 0 for v in new.delay_prompt_keys.values()):
            raise ValueError("delay_prompt_keys must be >= 0 seconds")
        new.answer_key, new.correct_rate = {str(k): str(v) for k, v in new.answer_key.items()}, float(new.correct_rate)
        if not 0 <= new.correct_rate <= 1:
            raise ValueError("correct_rate must be in [0, 1]")
        load_responder(new.responder)
        return new


class Stats:
    """Request counters for `/_stats`; control endpoints are not counted."""

    def __init__(self, max_records: int):
        self.total = 0
        self.endpoints: Counter[str] = Counter()
        self.prompt_keys: Counter[str] = Counter()
        self.records: deque[dict] = deque(maxlen=max_records)
        self.in_flight = 0
        self.max_in_flight = 0
        self.rate_limited = 0  # requests refused by the rpm / tpm limits
        self.tokens = 0  # prompt + completion tokens of the answers sent

    def record_chat(self, key: str, model: Any, status: int | None, fault: str | None, source: str) -> None:
        """Count one chat request (over HTTP or as a batch line)."""
        self.prompt_keys[key] += 1
        self.records.append({"prompt_key": key, "model": model, "status": status, "fault": fault, "source": source})

    def snapshot(self) -> dict:
        """JSON-ready view of all counters."""
        return {
            "total_requests": self.total,
            "endpoints": dict(self.endpoints),
            "prompt_keys": dict(self.prompt_keys),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "rate_limited": self.rate_limited,
            "tokens": self.tokens,
            "recent": list(self.records),
        }


class ServerState:
    """Everything the handlers share: config, fault picker, counters, batches."""

    def __init__(self, config: ServerConfig):
        self.config = ServerConfig().updated(dataclasses.asdict(config))
        self.picker = FaultPicker()
        self.picker.configure(self.config.faults, self.config.script, self.config.fail_prompt_keys, self.config.seed)
        self.stats = Stats(self.config.max_records)
        self.batches = BatchStore(self.answer_batch_line)
        self.seq = 0
        self.limits = self._limits()

    def _limits(self) -> RateLimits:
        config = self.config
        return RateLimits(config.rpm, config.tpm, config.rate_burst_s, config.tpm_counts)

    def configure(self, changes: dict[str, Any]) -> dict:
        """Apply config changes; a new `script` replaces the remaining scripted faults."""
        new = self.config.updated(changes)
        script = new.script if "script" in changes else list(self.picker.script)
        self.picker.configure(new.faults, script, new.fail_prompt_keys, new.seed)
        if new.max_records != self.stats.records.maxlen:
            self.stats.records = deque(self.stats.records, maxlen=new.max_records)
        self.config = new
        if {"rpm", "tpm", "rate_burst_s", "tpm_counts"} & set(changes):
            self.limits = self._limits()  # new limits start with full buckets
        return self.describe()

    def describe(self) -> dict:
        """The current config, with `script` showing the faults still queued."""
        return {**dataclasses.asdict(self.config), "script": list(self.picker.script)}

    def reset(self) -> None:
        """Clear counters, files and batches; keep the config."""
        self.stats = Stats(self.config.max_records)
        self.batches = BatchStore(self.answer_batch_line)
        self.seq = 0
        self.limits = self._limits()

    def is_long(self, body: dict) -> bool:
        """Whether this prompt is one of the `long_answer_share` whose answers are long (the same on every run)."""
        share = self.config.long_answer_share
        return share > 0 and unit_interval(self.config.seed, 0, prompt_key(body.get("messages"))) < share

    def complete(self, body: dict, fault: str | None) -> dict:
        """A chat.completion body for `body`, with any content fault applied."""
        if self.config.responder is None and wants_answer_tag(body):
            content = tagged_answer_content(body, self.config.answer_key, self.config.correct_rate)
        else:
            content = load_responder(self.config.responder)(body)
        if self.is_long(body):
            content = lengthened(content, self.config.long_answer_words)
        content, finish_reason = apply_content_fault(fault, content)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and limit > 0 and count_words(content) > limit:
            content, finish_reason = " ".join(content.split()[:limit]), "length"
        completion_tokens = count_words(content)
        usage_prompt = prompt_tokens(body.get("messages"))
        return {
            "id": "chatcmpl-" + request_digest(body).hex()[:24],
            "object": "chat.completion",
            "created": CREATED,
            "model": body.get("model") or MODELS[0],
            "system_fingerprint": "fp_rare_testing",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": usage_prompt,
                "completion_tokens": completion_tokens,
                "total_tokens": usage_prompt + completion_tokens,
            },
        }

    def answer_batch_line(self, body: dict) -> tuple[int, dict]:
        """Answer one batch request; only `fail_prompt_keys` faults apply to batch lines."""
        key = prompt_key(body.get("messages"))
        fault = self.config.fail_prompt_keys.get(key)
        status = ERROR_STATUS.get(fault, 200)
        self.stats.record_chat(key, body.get("model"), status, fault, "batch")
        if status != 200:
            return status, error_body(status)
        try:
            return 200, self.complete(body, fault)
        except Exception as exc:  # a plugged-in responder may fail; report it like OpenAI would
            return 500, error_body(500, f"responder failed: {exc!r}")


def lengthened(content: str, words: int) -> str:
    """`content` with `words` more words: in a `notes` key of a JSON object, else as a last paragraph."""
    filler = " ".join(f"note{n}" for n in range(words))
    try:
        document = json.loads(content)
    except ValueError:
        document = None
    if isinstance(document, dict):
        return json.dumps({**document, "notes": filler}, ensure_ascii=False)
    return f"{content}\n\n{filler}"
