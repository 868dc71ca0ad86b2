"""A model's final choice read from its text, and compared with a question's gold answer.

The choice is the last `<answer>...</answer>`; failing that, for a question with options, the
last option the text states ("the answer is C", "Answer: (B)", "option D"); for an open
question, the text after the last "Answer:" line.
"""

from __future__ import annotations

import re

from rare.inputs.questions import normalized_text
from rare.operators.reason_distill import final_answer

_TAG = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_LONE_LETTER = re.compile(r"^\(?([A-Za-z])\)?[.:)]?$")  # "c", "(C)", "C."
_LEADING_LETTER = re.compile(r"^(?i:option\s+)?\(?([A-Z])(?:[.):]|\)?\s)")  # "C. text", "(C) text", "option C ..."
_STATED = re.compile(
    r"(?i:answer|option|choice)(?:\s+(?i:is))?\s*[:：]?\s*[*_]*\(?([A-Z])\)?(?![A-Za-z])|\(([A-Z])\)(?![A-Za-z])"
)


def option_of(text: str, options: dict[str, str]) -> str | None:
    """The option letter `text` names: "C", "(C)", "C. its text", or exactly one option's text."""
    text = text.strip().strip("*_ ")
    leading = _LONE_LETTER.match(text) or _LEADING_LETTER.match(text)
    if leading and leading.group(1).upper() in options:
        return leading.group(1).upper()
    wanted = normalized_text(text)
    matching = [letter for letter, option in options.items() if normalized_text(option) == wanted]
    return matching[0] if len(matching) == 1 else None


def extract_choice(text: str, options: dict[str, str] | None) -> str | None:
    """The final choice in a model's `text`: an option letter for a question with `options`, else
    free text; None when the text states none."""
    tags = _TAG.findall(text or "")
    if tags:
        tagged = tags[-1].strip()
        if not options:
            return tagged or None
        return option_of(tagged, options) or tagged or None
    if not options:
        return final_answer(text or "")
    stated = [match.group(1) or match.group(2) for match in _STATED.finditer(text or "")]
    stated = [letter.upper() for letter in stated if letter.upper() in options]
    return stated[-1] if stated else None


def matches_gold(choice: str | None, gold: str, options: dict[str, str] | None) -> bool:
    """Whether `choice` is the gold: the same letter for options, the same normalized text otherwise."""
    if choice is None:
        return False
    if options:
        return choice == gold
    return normalized_text(choice) == normalized_text(gold)
