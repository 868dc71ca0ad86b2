"""Labelled questions as input (the `qa` recipe): a question, its options, the gold answer, and any
documents the dataset ships with it, normalized into the columns the QA steps read.

Options come as a mapping letter -> text or as a list of texts (lettered A, B, C, ... in order);
a row without options is an open question. The gold answer is a letter, an option's text, or free
text for an open question. A row that cannot be checked against its gold is refused with a reason.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping

LETTERS = string.ascii_uppercase
# the columns a normalized question row has (besides `id` and the input's other fields)
QUESTION, OPTIONS, GOLD, GOLD_TEXT, CONTEXT = "question", "options", "gold", "gold_text", "context"
_LETTER = re.compile(r"^\(?([A-Za-z])[).:]?$")  # "B", "b", "(B)", "B.", "B)"


class QuestionRefused(ValueError):
    """A question row that cannot be used; the message is the reason written to failed.jsonl."""


def normalized_text(text: str) -> str:
    """Lower case, punctuation dropped, spaces collapsed: how free-text answers are compared."""
    return " ".join(re.sub(r"[^\w\s]", " ", str(text).lower()).split())


def lettered_options(options) -> dict[str, str] | None:
    """`options` as {letter: text} in order; None for an open question (no options given)."""
    if options is None:
        return None
    if isinstance(options, Mapping):
        items = [(str(key).strip().upper(), value) for key, value in options.items()]
        bad = [key for key, _ in items if len(key) != 1 or key not in LETTERS]
        if bad:
            raise QuestionRefused(f"option keys must be single letters A-Z, got {bad[:3]}")
    elif isinstance(options, (list, tuple)):
        if len(options) > len(LETTERS):
            raise QuestionRefused(f"{len(options)} options; at most {len(LETTERS)} can be lettered")
        items = list(zip(LETTERS, options))
    else:
        raise QuestionRefused(
            f"options must be a mapping letter -> text or a list of texts, got {type(options).__name__}"
        )
    if not items:
        raise QuestionRefused("options is empty; leave it out for an open question")
    for letter, text in items:
        if not isinstance(text, (str, int, float)) or isinstance(text, bool) or not str(text).strip():
            raise QuestionRefused(f"option {letter} must be a non-empty text, got {text!r}")
    return {letter: str(text).strip() for letter, text in items}


def gold_letter(answer, options: dict[str, str]) -> str:
    """The letter of the gold `answer`: given as a letter, or as the text of one option."""
    if answer is None or isinstance(answer, bool) or not str(answer).strip():
        raise QuestionRefused("the question has options but no gold answer")
    text = str(answer).strip()
    letter = _LETTER.match(text)
    if letter and letter.group(1).upper() in options:
        return letter.group(1).upper()
    wanted = normalized_text(text)
    matching = [key for key, option in options.items() if normalized_text(option) == wanted]
    if len(matching) == 1:
        return matching[0]
    if letter:
        raise QuestionRefused(f"the gold answer {text!r} is not an option (options: {', '.join(options)})")
    raise QuestionRefused(
        f"the gold answer {text!r} is neither an option letter ({', '.join(options)}) nor one option's text"
    )


def context_documents(context) -> list[str] | None:
    """The documents a dataset ships with a question: one text or a list of texts; None when absent."""
    if context is None or (isinstance(context, str) and not context.strip()):
        return None
    if isinstance(context, str):
        return [context]
    if isinstance(context, (list, tuple)) and all(isinstance(text, str) for text in context):
        return [text for text in context if text.strip()] or None
    raise QuestionRefused(f"context must be a text or a list of texts, got {type(context).__name__}")


def question_normalizer(
    question_field: str = "question",
    options_field: str = "options",
    answer_field: str = "answer",
    context_field: str | None = "context",
) -> Callable[[dict], dict]:
    """A function turning an input row into a question row, or raising QuestionRefused with the reason.

    The row's other fields are kept; the four named ones become `question`, `options`
    ({letter: text} or None), `gold` (the letter, or the free text of an open question),
    `gold_text` (the gold option's text) and `context` (list of texts or None).
    """
    mapped = {question_field, options_field, answer_field, context_field}

    def normalize(row: dict) -> dict:
        options = lettered_options(row.get(options_field))
        answer = row.get(answer_field)
        if options is None:
            if answer is None or isinstance(answer, (dict, list, bool)) or not str(answer).strip():
                raise QuestionRefused(f"the open question has no gold answer in '{answer_field}'")
            gold = gold_text = str(answer).strip()
        else:
            gold = gold_letter(answer, options)
            gold_text = options[gold]
        context = context_documents(row.get(context_field)) if context_field else None
        rest = {key: value for key, value in row.items() if key not in mapped}
        for column in (OPTIONS, GOLD, GOLD_TEXT, CONTEXT):
            if column in rest:
                raise QuestionRefused(f"the row has a '{column}' field, a name the qa recipe writes; rename it")
        return {
            **rest,
            QUESTION: row[question_field].strip(),
            OPTIONS: options,
            GOLD: gold,
            GOLD_TEXT: gold_text,
            CONTEXT: context,
        }

    return normalize


def options_text(options: dict[str, str] | None) -> str:
    """The options as lines "A. text" (empty for an open question)."""
    return "\n".join(f"{letter}. {text}" for letter, text in (options or {}).items())
