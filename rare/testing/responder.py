"""Deterministic fake-LLM answers for the local OpenAI-compatible test server.

Every answer is a pure function of the request (model, messages, response_format):
pseudo-randomness comes from a hash of the request, never from time or global
state, so identical requests always get identical answers.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from collections import Counter
from collections.abc import Callable
from functools import cache
from typing import Any

Responder = Callable[[dict], str]

# ASCII punctuation becomes a word break (str.translate is much cheaper than a regex scan).
_SEPARATORS = {i: " " for i in range(128) if not (chr(i).isalnum() or chr(i) in "_-'")}

# Function words plus the instruction vocabulary prompt templates tend to share;
# keeping them out leaves the document's own terms, which is what lets a BM25
# search with the generated question find the source document.
_STOPWORDS = frozenset(
    """
    a about above after again against all also although am an and any are as at be
    because been before being below between both but by can could did do does doing
    down during each either every few for from further had has have having he her here
    hers him his how however i if in into is it its itself just may me might more most
    must my no nor not now of off on once one only or other our out over own same she
    should so some such than that the their them then there these they this those
    through to too under until up upon very was we were what when where which while
    who whom why will with within without would yes you your
    answer answers based below brief context detailed document documents example
    explain following format generate given hard hard_query include information
    instruction instructions json key must output passage please provide query question
    questions reasoning respond response return scenario step steps task text user
    using valid write
    """.split()
)

_QUESTIONS = (
    "How does {0} interact with {1} when {2} and {3} are involved in {4} under {5}?",
    "Why would {0} change the outcome for {1}, given {2}, {3} and {4} with {5}?",
    "What role does {0} play in {1} once {2}, {3} and {4} constrain {5}?",
    "Which consequence of {0} matters most for {1}, considering {2}, {3}, {4} and {5}?",
)
_SCENARIOS = (
    "A practitioner working with {0} notices {1} alongside {2}, {3} and {4}, and must reason about {5}.",
    "During a review of {0}, a team finds that {1}, {2} and {3} conflict with {4} and {5}.",
    "An analyst compares {0} and {1} while {2}, {3}, {4} and {5} shift over time.",
)


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no insignificant whitespace."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def prompt_key(messages: Any) -> str:
    """First 16 hex chars of sha256 over the canonical JSON of `messages`."""
    return hashlib.sha256(canonical_json(messages).encode()).hexdigest()[:16]


def request_digest(body: dict) -> bytes:
    """Hash of the parts of a request that determine its answer."""
    key = [body.get("model"), body.get("messages"), body.get("response_format")]
    return hashlib.sha256(canonical_json(key).encode()).digest()


def message_text(message: Any) -> str:
    """The text of one chat message, joining the text parts of list contents."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part.get("text", "") for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def count_words(text: str) -> int:
    """Approximate token count: whitespace-separated words."""
    return len(text.split())


def prompt_tokens(messages: Any) -> int:
    """Approximate prompt tokens over all messages."""
    if not isinstance(messages, list):
        return 0
    return sum(count_words(message_text(m)) for m in messages)


def _last_user_text(messages: list) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message)
    return " ".join(message_text(m) for m in messages)


def distinctive_words(text: str, n: int = 12) -> list[str]:
    """Up to `n` content words of `text`, favouring long and repeated ones."""
    counts: Counter[str] = Counter()  # keys stay in first-occurrence order
    for token, count in Counter(text.lower().translate(_SEPARATORS).split()).items():
        word = token.strip("_-'")
        if len(word) >= 3 and word not in _STOPWORDS:
            counts[word] += count
    # sorted() is stable, so ties keep first-occurrence order.
    return sorted(counts, key=lambda w: -(len(w) + 3 * min(counts[w] - 1, 3)))[:n]


def _padded(words: list[str], n: int, filler: tuple[str, ...]) -> list[str]:
    pool = words + [w for w in filler if w not in words]
    return [pool[i % len(pool)] for i in range(n)]


def _pick(options: tuple[str, ...], digest: bytes, salt: int) -> str:
    return options[digest[salt] % len(options)]


def _hard_query(words: list[str], digest: bytes) -> dict[str, str]:
    filler = ("the system", "the process", "the outcome", "the evidence", "the change", "the result")
    q = _padded(words[:6], 6, filler)
    s = _padded(words[3:9] + words[:3], 6, filler)
    return {
        "question": _pick(_QUESTIONS, digest, 0).format(*q),
        "scenario": _pick(_SCENARIOS, digest, 1).format(*s),
    }


def wants_json(body: dict) -> bool:
    """True when the request asks for JSON output or mentions `hard_query`."""
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        return True
    messages = body.get("messages")
    return isinstance(messages, list) and any("hard_query" in message_text(m) for m in messages)


def _schema_of(fmt: Any) -> dict | None:
    if not isinstance(fmt, dict):
        return None
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else fmt.get("schema")
    return schema if isinstance(schema, dict) else None


class _SchemaFiller:
    """Builds a value satisfying the required parts of a simple JSON schema."""

    def __init__(self, root: dict, words: list[str], hard_query: dict[str, str], digest: bytes):
        self.root = root
        self.defs = {**root.get("definitions", {}), **root.get("$defs", {})}
        self.words = words or ["evidence"]
        self.hard_query = hard_query
        self.digest = digest

    def fill(self, schema: Any, name: str = "value", depth: int = 0) -> Any:
        if not isinstance(schema, dict) or depth > 8:
            return None
        ref = schema.get("$ref")
        if isinstance(ref, str):
            return self.fill(self.defs.get(ref.rsplit("/", 1)[-1]), name, depth + 1)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][self.digest[2] % len(schema["enum"])]
        for combinator in ("anyOf", "oneOf", "allOf"):
            if schema.get(combinator):
                return self.fill(schema[combinator][0], name, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind == "object" or (kind is None and "properties" in schema):
            props = schema.get("properties", {})
            keys = schema.get("required") or list(props)
            return {key: self.fill(props.get(key, {"type": "string"}), key, depth + 1) for key in keys}
        if kind == "array":  # `minItems` items, each from its own words and digest, so they differ
            items = schema.get("items", {"type": "string"})
            return [self._nth(n).fill(items, name, depth + 1) for n in range(max(1, int(schema.get("minItems", 1))))]
        if kind in ("integer", "number"):
            low = schema.get("minimum", 1)
            return int(low) if kind == "integer" else float(low)
        if kind == "boolean":  # mostly true, sometimes false: a judge's verdict disagrees now and then
            return self.digest[4] % 3 != 0
        if kind == "null":
            return None
        return self._text(name)

    def _nth(self, n: int) -> _SchemaFiller:
        if n == 0:
            return self
        words = self.words[n:] + self.words[:n]
        digest = hashlib.sha256(self.digest + bytes([n % 256])).digest()
        return _SchemaFiller(self.root, words, _hard_query(words, digest), digest)

    def _text(self, name: str) -> str:
        if name in self.hard_query:
            return self.hard_query[name]
        return f"{name.replace('_', ' ')}: " + ", ".join(self.words[:6]) + "."


def json_content(body: dict, words: list[str], digest: bytes) -> str:
    """JSON answer: schema-shaped when a schema is given, else a `hard_query` object."""
    hard_query = _hard_query(words, digest)
    schema = _schema_of(body.get("response_format"))
    if schema is not None:
        value = _SchemaFiller(schema, words, hard_query, digest).fill(schema)
        if isinstance(value, dict) and value:
            return json.dumps(value, ensure_ascii=False)
    return json.dumps({"hard_query": hard_query}, ensure_ascii=False)


def reasoning_content(words: list[str], digest: bytes) -> str:
    """Step-by-step reasoning text (about 60-120 words) ending in a final answer."""
    w = _padded(words, 8, ("the premise", "the evidence", "the mechanism", "the constraint", "the effect"))
    lines = [
        f"Step 1: Identify the key elements in the question: {w[0]}, {w[1]} and {w[2]}.",
        f"Step 2: Recall how {w[0]} relates to {w[3]} and what the context says about {w[4]}.",
        f"Step 3: Combine these facts, checking that {w[1]} is consistent with {w[5]}.",
        f"Step 4: Rule out alternatives that ignore {w[6]} or contradict {w[2]}.",
    ]
    if digest[3] % 2:
        lines.append(f"Step 5: Double-check the chain of reasoning against {w[7]} before concluding.")
    lines.append(f"Final answer: {w[0]} together with {w[3 + digest[5] % 5]} explains the outcome, as shown by {w[1]}.")
    return "\n".join(lines)


def _sampled_digest(body: dict) -> bytes:
    """The request's digest, mixed with its sampling seed: another seed, another reasoning path."""
    digest = request_digest(body)
    if body.get("seed") is not None:
        digest = hashlib.sha256(digest + str(body["seed"]).encode()).digest()
    return digest


def default_responder(body: dict) -> str:
    """The built-in answer for a chat completion request body."""
    messages = body.get("messages")
    messages = messages if isinstance(messages, list) else []
    words = distinctive_words(_last_user_text(messages))
    if wants_json(body):
        return json_content(body, words, request_digest(body))
    return reasoning_content(words, _sampled_digest(body))


_OPTION_LINE = re.compile(r"^([A-Z])\. \S", re.MULTILINE)


def wants_answer_tag(body: dict) -> bool:
    """True when the prompt asks for the final choice inside `<answer>...</answer>` (the qa recipe)."""
    messages = body.get("messages")
    return not wants_json(body) and isinstance(messages, list) and any("<answer>" in message_text(m) for m in messages)


def tagged_answer_content(body: dict, answer_key: dict[str, str], correct_rate: float) -> str:
    """`<think>reasoning</think><answer>X</answer>` for a labelled question.

    The question is found in `answer_key` (question text -> gold letter or text; the longest key
    the prompt contains). Each sampled path (request and seed) is right with probability
    `correct_rate`, drawn from the request's digest; a wrong path names another listed option, or
    for an open question a wrong text. A question not in the key gets a listed option at random.
    """
    messages = body.get("messages") or []
    text = _last_user_text(messages)
    digest = _sampled_digest(body)
    found = [question for question in answer_key if question and question in text]
    gold = answer_key[max(found, key=len)] if found else None
    letters = _OPTION_LINE.findall(text)
    draw = int.from_bytes(digest[:8], "big") / 2**64
    if gold is not None and draw < correct_rate:
        choice = gold
    else:
        wrong = [letter for letter in letters if letter != gold]
        choice = wrong[digest[8] % len(wrong)] if wrong else f"not {gold}" if gold else "unknown"
    reasoning = reasoning_content(distinctive_words(text), digest).rsplit("\n", 1)[0]
    return f"<think>\n{reasoning}\n</think>\n<answer>{choice}</answer>"


@cache
def load_responder(spec: str | None) -> Responder:
    """Resolve `"module:function"` to a callable; None means the default responder."""
    if not spec:
        return default_responder
    module_name, sep, attr = spec.partition(":")
    if not sep or not attr:
        raise ValueError(f"responder must look like 'module:function', got {spec!r}")
    func = getattr(importlib.import_module(module_name), attr)
    if not callable(func):
        raise ValueError(f"responder {spec!r} is not callable")
    return func
