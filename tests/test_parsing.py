"""Tolerant parsing of model answers into the hard_query JSON."""

import pytest

from rare.llm.parsing import ParseError
from rare.operators.doc2query import parse_hard_query

GOOD = '{"hard_query": {"question": "Why does this rule apply here?", "scenario": "A firm buys stock in a year of rising prices."}}'


@pytest.mark.parametrize(
    "text",
    [
        GOOD,
        f"```json\n{GOOD}\n```",
        f"Sure! Here is the JSON:\n{GOOD}\nHope this helps.",
        '{"hard_query": {"question": "Why does this rule apply here?", "scenario": "A firm buys stock in a year of rising prices.",}}',
        '{"question": "Why does this rule apply here?", "scenario": "A firm buys stock in a year of rising prices."}',
        "Notes {not json} then " + GOOD,
    ],
)
def test_usable_answers_parse(text):
    assert parse_hard_query(text) == ("Why does this rule apply here?", "A firm buys stock in a year of rising prices.")


def test_raw_line_breaks_inside_strings_parse():
    """llama.cpp's JSON grammar lets a model write a real newline or tab inside a string."""
    text = (
        '{"hard_query": {"question": "Why does this\nrule apply here?", "scenario": "A firm buys\tstock in a year."}}'
    )
    assert parse_hard_query(text) == ("Why does this\nrule apply here?", "A firm buys\tstock in a year.")


@pytest.mark.parametrize(
    "text,reason",
    [
        ("", "empty"),
        ("no json here", "no JSON object"),
        ('{"hard_query": {"question": "Why?"', "no JSON object"),
        ('{"hard_query": {"question": "", "scenario": "x"}}', "question"),
        ('{"hard_query": "text"}', "must be an object"),
        ('{"hard_query": {"question": "<the question>", "scenario": "<the scenario>"}}', "placeholder"),
        ('{"hard_query": {"question": "...", "scenario": "A firm buys stock in a year."}}', "placeholder"),
        ('{"hard_query": {"question": "Why?", "scenario": "A firm buys stock in a year."}}', "placeholder"),
    ],
)
def test_unusable_answers_say_why(text, reason):
    with pytest.raises(ParseError, match=reason):
        parse_hard_query(text)
