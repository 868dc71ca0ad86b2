"""Fault selection and fault-specific payloads for the local OpenAI-compatible server."""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Iterable, Mapping

# Faults answered with an HTTP error status instead of a completion.
ERROR_STATUS = {"400": 400, "429": 429, "429_no_retry_after": 429, "500": 500, "502": 502, "503": 503}
# Faults that alter the completion's content but still answer 200.
CONTENT_FAULTS = frozenset({"empty", "malformed_json", "truncated_json", "length"})
# Faults that change how (or whether) the answer travels over the connection.
TRANSPORT_FAULTS = frozenset({"timeout", "drop", "trickle"})
# A 200 whose body is not a chat completion (what a misbehaving proxy or gateway sends).
NOT_COMPLETION = "not_completion"
NOT_COMPLETION_BODY = {"status": "accepted", "detail": "the request is being processed"}
FAULTS = frozenset(ERROR_STATUS) | CONTENT_FAULTS | TRANSPORT_FAULTS | {NOT_COMPLETION, "content_filter"}
# Faults a second attempt survives: all but what the provider refuses for the request itself.
REFUSALS = frozenset({"400", "content_filter"})
RETRYABLE_FAULTS = FAULTS - REFUSALS
OK = "ok"

_ERRORS = {
    429: ("Rate limit reached for requests. Please retry later.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request.", "server_error", "internal_error"),
    502: ("Bad gateway.", "server_error", "bad_gateway"),
    503: ("The server is overloaded or not ready yet.", "server_error", "service_unavailable"),
}
_CLIENT_ERROR = ("Request failed.", "invalid_request_error", None)
# Prose with an unbalanced brace: looks like JSON to a careless parser, is not.
_MALFORMED = "Sure! Here is the JSON you asked for:\n{hard_query: question = ..., scenario = ...\nHope this helps."


def check_fault(name: str, *, allow_ok: bool = False) -> str:
    """Return `name` if it is a known fault (or "ok" when allowed), else raise ValueError."""
    if name in FAULTS or (allow_ok and name == OK):
        return name
    raise ValueError(f"unknown fault {name!r}; expected one of {sorted(FAULTS)}")


def error_body(status: int, message: str | None = None, type_: str | None = None, code: str | None = None) -> dict:
    """An OpenAI-shaped error payload."""
    default_message, default_type, default_code = _ERRORS.get(status, _CLIENT_ERROR)
    return {
        "error": {"message": message or default_message, "type": type_ or default_type, "code": code or default_code}
    }


def unit_interval(seed: int, seq: int, salt: str) -> float:
    """A deterministic float in [0, 1) for request number `seq`."""
    digest = hashlib.blake2b(f"{seed}:{seq}:{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class FaultPicker:
    """Decides which fault, if any, request number `seq` gets.

    Precedence: `fail_prompt_keys` (permanent per prompt), then the scripted
    queue (one entry consumed per chat request, "ok" meaning no fault), then
    the probabilistic `rates`, drawn from a seeded hash of the sequence number.
    """

    def __init__(self) -> None:
        self.script: deque[str] = deque()
        self.rates: list[tuple[str, float]] = []
        self.fail_prompt_keys: dict[str, str] = {}
        self.seed = 0

    def configure(
        self, rates: Mapping[str, float], script: Iterable[str], fail_prompt_keys: Mapping[str, str], seed: int
    ) -> None:
        """Validate and install new settings; the script replaces any remaining queue."""
        checked_rates = [(check_fault(k), float(v)) for k, v in rates.items()]
        if sum(p for _, p in checked_rates) > 1.0 + 1e-9:
            raise ValueError("fault rates must sum to at most 1")
        checked_script = [check_fault(str(f), allow_ok=True) for f in script]
        checked_keys = {str(k): check_fault(str(f)) for k, f in fail_prompt_keys.items()}
        self.rates, self.fail_prompt_keys, self.seed = checked_rates, checked_keys, int(seed)
        self.script = deque(checked_script)

    def pick(self, seq: int, key: str) -> str | None:
        """The fault for request `seq` with prompt key `key`, or None."""
        fault = self.fail_prompt_keys.get(key)
        if fault is not None:
            return fault
        if self.script:
            scripted = self.script.popleft()
            return None if scripted == OK else scripted
        if self.rates:
            u = unit_interval(self.seed, seq, "fault")
            for name, p in self.rates:
                if u < p:
                    return name
                u -= p
        return None


def apply_content_fault(fault: str | None, content: str) -> tuple[str, str]:
    """Content and finish_reason after a content fault (unchanged for other faults)."""
    if fault == "empty":
        return "", "stop"
    if fault == "malformed_json":
        return _MALFORMED, "stop"
    if fault == "truncated_json":
        try:
            json.loads(content)
            document = content
        except ValueError:
            document = json.dumps({"answer": content}, ensure_ascii=False)
        return document[: len(document) // 2], "stop"
    if fault == "content_filter":
        return "", "content_filter"
    if fault == "length":
        words = content.split(" ")
        return " ".join(words[: max(1, len(words) // 2)]), "length"
    return content, "stop"


def fault_outcomes(records: list[dict]) -> dict[str, dict[str, int]]:
    """Per fault kind, from the server's request records (`/_stats` `recent`): how often it was
    injected, how often the same prompt was asked again afterwards (retried), and how often it
    was the last answer that prompt got (kept: the step used it as it was, e.g. a plain-text step
    given "truncated JSON" text, or gave up on the row: failed.jsonl tells which)."""
    table: dict[str, dict[str, int]] = {}
    last: dict[str, str | None] = {}
    for record in records:
        key, fault = record["prompt_key"], record["fault"]
        previous = last.get(key)
        if previous is not None:
            table[previous]["retried"] += 1
        if fault is not None:
            row = table.setdefault(fault, {"injected": 0, "retried": 0, "kept": 0})
            row["injected"] += 1
        last[key] = fault if fault not in (None, "trickle") else None  # a slow answer is still an answer
    for fault in last.values():
        if fault is not None:
            table[fault]["kept"] += 1
    return table
