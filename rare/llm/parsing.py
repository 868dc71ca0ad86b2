"""Tolerant JSON extraction from model text: code fences, prose around it, trailing commas."""

import json
import re

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


class ParseError(ValueError):
    """The text holds no JSON object of the expected shape."""


def _candidates(text: str):
    for match in _FENCE.finditer(text):
        yield match.group(1)
    start = text.find("{")
    while start != -1:
        end = _matching_brace(text, start)
        if end is not None:
            yield text[start : end + 1]
        start = text.find("{", start + 1)


def _matching_brace(text: str, start: int) -> int | None:
    depth, in_string, escaped = 0, False, False
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index
    return None


def extract_json_object(text: str) -> dict:
    """The first JSON object in `text` that parses; raises ParseError naming what was seen."""
    if not isinstance(text, str) or not text.strip():
        raise ParseError("the model returned an empty answer")
    for candidate in _candidates(text):
        for attempt in (candidate, _TRAILING_COMMA.sub(r"\1", candidate)):
            try:  # strict=False: raw newlines and tabs inside strings, which llama.cpp's JSON grammar lets through
                value = json.loads(attempt, strict=False)
            except (json.JSONDecodeError, RecursionError):  # RecursionError: nested too deep to be an answer
                continue
            if isinstance(value, dict):
                return value
    snippet = text.strip().replace("\n", " ")[:160]
    raise ParseError(f"no JSON object found in the answer: {snippet!r}")
