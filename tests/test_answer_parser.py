"""The answer contract (METHOD §5): parse_answer never raises, matches the official parser in strict
mode, and every string of the constrained-decoding language (GBNF / regex) parses."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stvg_ros.core.answer import (
    AnswerFailure,
    answer_grammar,
    answer_regex,
    format_answer,
    is_well_formatted,
    parse_answer,
    think_budget_chars,
)

# The official parser (METHOD §5), written out independently of core/answer.py.
OFFICIAL_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
OFFICIAL_ID = re.compile(r"Target ID:\s*(\d+)", re.IGNORECASE)
OFFICIAL_SPAN = re.compile(r"Time range:\s*(\d+\.?\d*)\s*(?:to|and)\s*(\d+\.?\d*)", re.IGNORECASE)


def official(text: str):
    blocks = OFFICIAL_BLOCK.findall(text)
    if not blocks:
        return None
    body = blocks[-1].strip()
    id_match, span_match = OFFICIAL_ID.search(body), OFFICIAL_SPAN.search(body)
    if not id_match or not span_match:
        return None
    return int(id_match.group(1)), float(span_match.group(1)), float(span_match.group(2))


FRAGMENTS = st.sampled_from([
    "<answer>", "</answer>", "<think>", "</think>", "Target ID:", "Target ID: 3", "ID 7", "Time range:",
    " to ", " and ", " - ", "12.54", "17.83", "3", "[", "]", "s", ",", "\n", "target id: 12", "time range: 1 to 2",
    "Target ID: -4", "Time range: 5.5 to 1.0", "🙂", "\x00", "99999999999999999999", "1e9",
])
MALFORMED = st.lists(st.one_of(FRAGMENTS, st.text(max_size=8)), max_size=20).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=MALFORMED, strict=st.booleans(), duration=st.one_of(st.none(), st.floats(0, 100)),
       ids=st.one_of(st.none(), st.lists(st.integers(0, 50), max_size=5)))
def test_parse_answer_never_raises_and_reports_why(text, strict, duration, ids):
    parsed = parse_answer(text, strict=strict, duration=duration, track_ids=ids)
    assert parsed.ok == (parsed.failure is None)
    if parsed.ok:
        assert parsed.target_id is not None and parsed.start <= parsed.end
        if duration is not None:
            assert parsed.start >= 0 and parsed.end <= duration
        if ids is not None:
            assert parsed.target_id in ids
    else:
        assert isinstance(parsed.failure, AnswerFailure) and parsed.reason


@settings(max_examples=300, deadline=None)
@given(text=MALFORMED)
def test_strict_mode_agrees_with_the_official_parser(text):
    parsed = parse_answer(text, strict=True)
    expected = official(text)
    if expected is None:
        assert not parsed.ok
    elif expected[1] <= expected[2]:
        assert parsed.ok and (parsed.target_id, parsed.start, parsed.end) == expected
    else:
        assert parsed.failure is AnswerFailure.START_AFTER_END


@given(target=st.integers(1, 10**5), start=st.floats(0, 1000), length=st.floats(0, 1000))
def test_formatted_answers_round_trip(target, start, length):
    end = start + length
    text = f"<think>ok</think><answer>{format_answer(target, start, end)}</answer>"
    parsed = parse_answer(text, strict=True)
    assert parsed.ok and parsed.target_id == target and is_well_formatted(text)
    assert parsed.start == pytest.approx(round(start, 2), abs=0.006) and parsed.end == pytest.approx(round(end, 2), abs=0.006)


@pytest.mark.parametrize(
    ("text", "failure"),
    [
        ("", AnswerFailure.NO_ANSWER_BLOCK),
        ("<answer>Time range: 1.0 to 2.0</answer>", AnswerFailure.NO_TARGET_ID),
        ("<answer>Target ID: 3</answer>", AnswerFailure.NO_TIME_RANGE),
        ("<answer>Target ID: 3, Time range: 5.00 to 2.00</answer>", AnswerFailure.START_AFTER_END),
        ("<answer>Target ID: 3, Time range: 50.00 to 52.00</answer>", AnswerFailure.SPAN_OUTSIDE_CLIP),
        ("<answer>Target ID: 9, Time range: 1.00 to 2.00</answer>", AnswerFailure.UNKNOWN_ID),
        ("<think>truncated reasoning that never clos", AnswerFailure.NO_ANSWER_BLOCK),
        ("<answer>Target ID: 3, Time ran", AnswerFailure.NO_ANSWER_BLOCK),
    ],
)
def test_each_malformed_answer_has_its_reason(text, failure):
    parsed = parse_answer(text, strict=True, duration=20.0, track_ids=[1, 3])
    assert not parsed.ok and parsed.failure is failure


def test_lenient_mode_repairs_what_the_robot_can_use():
    parsed = parse_answer("Target ID: [4], Time range: [7.5s - 2.0s]", strict=False, duration=6.0, track_ids=[4])
    assert parsed.ok and (parsed.target_id, parsed.start, parsed.end) == (4, 2.0, 6.0)


def test_non_string_input_is_a_failure_not_an_exception():
    assert not parse_answer(None).ok  # type: ignore[arg-type]
    assert not parse_answer(b"<answer>Target ID: 1</answer>").ok  # type: ignore[arg-type]


# ---------------------------------------------------------------- the constrained-decoding language


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), reasoning=st.booleans(), ids=st.lists(st.integers(1, 40), min_size=1, max_size=4),
       duration=st.floats(0.0, 90.0))
def test_every_string_the_grammar_allows_parses_leniently(data, reasoning, ids, duration):
    pattern = answer_regex(reasoning=reasoning, track_ids=ids, max_think_chars=40, max_seconds=duration)
    text = data.draw(st.from_regex(re.compile(pattern, re.DOTALL), fullmatch=True))
    parsed = parse_answer(text, strict=False, duration=round(duration, 2), track_ids=ids)
    assert parsed.ok, (text, parsed.reason)
    assert is_well_formatted(text) == reasoning


def test_grammar_and_regex_describe_the_same_rules():
    gbnf = answer_grammar(reasoning=False, track_ids=[12, 3], max_seconds=2.05, max_think_chars=10)
    assert 'root ::= answer' in gbnf
    assert 'target-id ::= "3" | "12"' in gbnf
    assert '"2.05"' in gbnf and '"2.06"' not in gbnf
    assert "think-text ::= [\\x20-\\x3b\\x3d-\\x7e\\n]{0,10}" in gbnf
    rx = re.compile(answer_regex(reasoning=False, track_ids=[12, 3], max_seconds=2.05))
    assert rx.fullmatch("<answer>Target ID: 12, Time range: 0.50 to 2.05</answer>")
    assert not rx.fullmatch("<answer>Target ID: 12, Time range: 0.50 to 2.06</answer>")
    assert not rx.fullmatch("<answer>Target ID: 4, Time range: 0.50 to 1.00</answer>")
    with_think = answer_grammar(reasoning=True)
    assert "root ::= think ws answer" in with_think and "target-id  ::= [1-9] [0-9]{0,5}" in with_think


def test_think_budget_leaves_room_for_the_answer():
    longest_answer = "</think>\n\n<answer>" + format_answer(999999, 99999.99, 99999.99) + "</answer>"
    assert think_budget_chars(512) + len(longest_answer) <= 512
    assert think_budget_chars(10) == 0
