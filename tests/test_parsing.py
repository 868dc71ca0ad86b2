"""Tolerant parsing of model answers into the hard_query JSON."""

import pytest

from rare.llm.parsing import ParseError
from rare.operators.doc2query import parse_hard_query

GOOD = '{"hard_query": {"question": "Why?", "scenario": "A case."}}'


@pytest.mark.parametrize(
    "text",
    [
        GOOD,
        f"```json\n{GOOD}\n```",
        f"Sure! Here is the JSON:\n{GOOD}\nHope this helps.",
        '{"hard_query": {"question": "Why?", "scenario": "A case.",}}',
        '{"question": "Why?", "scenario": "A case."}',
        'Notes {not json} then ' + GOOD,
    ],
)
def test_usable_answers_parse(text):
    assert parse_hard_query(text) == ("Why?", "A case.")


@pytest.mark.parametrize(
    "text,reason",
    [
        ("", "empty"),
        ("no json here", "no JSON object"),
        ('{"hard_query": {"question": "Why?"', "no JSON object"),
        ('{"hard_query": {"question": "", "scenario": "x"}}', "question"),
        ('{"hard_query": "text"}', "must be an object"),
    ],
)
def test_unusable_answers_say_why(text, reason):
    with pytest.raises(ParseError, match=reason):
        parse_hard_query(text)
