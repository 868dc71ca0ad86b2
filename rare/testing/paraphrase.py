"""Planted unlabeled positives for tests and benchmarks: a paraphrase of a document.

``paraphrase(text, seed)`` reorders the sentences, and of every fifth word replaces it with
a synonym when it has one (a small table) or drops it; a first line ending in no period is
taken as the title and replaced with another. The result answers every question the
original answers, but shares few word 5-grams with it (the near-duplicate check cannot see
it) and scores lower under BM25.
"""

from __future__ import annotations

import random
import re

SYNONYMS = {
    "use": "employ",
    "uses": "employs",
    "used": "employed",
    "reduce": "lower",
    "reduces": "lowers",
    "increase": "raise",
    "increases": "raises",
    "large": "big",
    "small": "little",
    "fast": "quick",
    "method": "approach",
    "methods": "approaches",
    "result": "outcome",
    "results": "outcomes",
    "show": "demonstrate",
    "shows": "demonstrates",
    "important": "key",
    "common": "frequent",
    "cause": "trigger",
    "causes": "triggers",
    "problem": "issue",
    "problems": "issues",
    "data": "information",
    "system": "setup",
    "systems": "setups",
    "requires": "needs",
    "require": "need",
    "often": "frequently",
    "quickly": "rapidly",
    "because": "since",
    "however": "yet",
    "therefore": "so",
    "many": "numerous",
    "change": "alter",
    "changes": "alters",
    "help": "assist",
    "helps": "assists",
    "start": "begin",
    "starts": "begins",
    "stop": "halt",
    "stops": "halts",
    "build": "construct",
    "builds": "constructs",
    "check": "verify",
    "checks": "verifies",
    "error": "fault",
    "errors": "faults",
    "value": "figure",
    "values": "figures",
    "store": "keep",
    "stores": "keeps",
    "before": "prior to",
    "after": "following",
}
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def paraphrase(text: str, seed: int = 0) -> str:
    """The text with sentences reordered, every fifth word swapped for a synonym or dropped, a new title."""
    rng = random.Random(seed)
    title, _, body = text.partition("\n")
    if body and not title.rstrip().endswith("."):
        title = "Notes on " + " ".join(reversed(title.split()))
    else:
        title, body = "", text
    sentences = [s for s in _SENTENCE.split(body.strip()) if s]
    if len(sentences) > 1:
        shift = 1 + rng.randrange(len(sentences) - 1)
        sentences = sentences[shift:] + sentences[:shift]
    words, out = " ".join(sentences).split(), []
    for i, word in enumerate(words):
        if i % 5 == 4:
            core = word.strip(".,;:").lower()
            if core in SYNONYMS:
                out.append(word.lower().replace(core, SYNONYMS[core]))
            elif word.endswith((".", "!", "?")) and out:
                out[-1] += word[-1]  # keep the sentence end
            continue
        out.append(word)
    body = " ".join(out)
    return f"{title}\n{body}" if title else body
