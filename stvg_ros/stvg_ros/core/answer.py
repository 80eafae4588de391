"""The answer contract (METHOD.md §5): `<think>…</think><answer>Target ID: N, Time range: a to b</answer>`.

`parse_answer` never raises. Strict mode is bit-identical to the official parser (used for rewards
and parity metrics); lenient mode is what the robot uses (brackets, units, dashes, swapped bounds).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Collection
from dataclasses import dataclass

ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
STRICT_ID = re.compile(r"Target ID:\s*(\d+)", re.IGNORECASE)
STRICT_SPAN = re.compile(r"Time range:\s*(\d+\.?\d*)\s*(?:to|and)\s*(\d+\.?\d*)", re.IGNORECASE)
LENIENT_ID = re.compile(r"(?:Target\s*)?ID\s*[:#]?\s*\[?\s*(\d+)", re.IGNORECASE)
LENIENT_SPAN = re.compile(
    r"Time\s*range\s*:?\s*\[?\s*(\d+(?:\.\d*)?)\s*s?\s*(?:to|and|-|–)\s*(\d+(?:\.\d*)?)\s*s?", re.IGNORECASE
)
FORMAT_PATTERN = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
THINK_BLOCK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


class AnswerFailure(enum.StrEnum):
    """Why an answer could not be used. The value is a short human-readable reason."""

    NO_ANSWER_BLOCK = "no <answer>...</answer> block"
    NO_TARGET_ID = "no 'Target ID: N' in the answer"
    NO_TIME_RANGE = "no 'Time range: a to b' in the answer"
    START_AFTER_END = "start time is after end time"
    SPAN_OUTSIDE_CLIP = "time range lies outside the clip"
    UNKNOWN_ID = "target ID is not among the tracked objects"


@dataclass(frozen=True)
class ParsedAnswer:
    """A parsed model answer. `ok` is True only when every field is usable."""

    ok: bool
    target_id: int | None = None
    start: float | None = None
    end: float | None = None
    failure: AnswerFailure | None = None
    reasoning: str = ""
    answer_text: str = ""
    well_formatted: bool = False

    @property
    def reason(self) -> str:
        return "" if self.ok else (self.failure.value if self.failure else "unknown failure")


def is_well_formatted(completion: str) -> bool:
    """True when the whole completion is exactly a think block followed by an answer block."""
    return FORMAT_PATTERN.fullmatch(completion.strip()) is not None


def parse_answer(
    completion: str,
    *,
    strict: bool = True,
    duration: float | None = None,
    track_ids: Collection[int] | None = None,
) -> ParsedAnswer:
    """Parse a completion into (target ID, start, end) seconds from the clip start.

    strict=True follows the official parser exactly (the last answer block; both clauses required).
    Lenient mode also accepts a missing answer block, brackets, 's' units, dashes, and swaps
    reversed bounds, and clamps the span to [0, duration]. Checks against `duration` and
    `track_ids` run in both modes when given.
    """
    if not isinstance(completion, str):
        completion = str(completion or "")
    well_formatted = is_well_formatted(completion)
    think = THINK_BLOCK.findall(completion)
    reasoning = think[-1].strip() if think else ""
    blocks = ANSWER_BLOCK.findall(completion)

    def fail(failure: AnswerFailure, body: str = "", **kw) -> ParsedAnswer:
        return ParsedAnswer(False, failure=failure, reasoning=reasoning, answer_text=body,
                            well_formatted=well_formatted, **kw)

    if blocks:
        body = blocks[-1].strip()
    elif strict:
        return fail(AnswerFailure.NO_ANSWER_BLOCK)
    else:
        body = completion.rsplit("</think>", 1)[-1].strip()
    id_re, span_re = (STRICT_ID, STRICT_SPAN) if strict else (LENIENT_ID, LENIENT_SPAN)
    id_match = id_re.search(body)
    span_match = span_re.search(body)
    if id_match is None:
        return fail(AnswerFailure.NO_TARGET_ID, body)
    if span_match is None:
        return fail(AnswerFailure.NO_TIME_RANGE, body)
    target_id = int(id_match.group(1))
    start, end = float(span_match.group(1)), float(span_match.group(2))
    if start > end:
        if strict:
            return fail(AnswerFailure.START_AFTER_END, body, target_id=target_id, start=start, end=end)
        start, end = end, start
    if duration is not None:
        if start > duration or end < 0:
            return fail(AnswerFailure.SPAN_OUTSIDE_CLIP, body, target_id=target_id, start=start, end=end)
        if end > duration:
            if strict:
                return fail(AnswerFailure.SPAN_OUTSIDE_CLIP, body, target_id=target_id, start=start, end=end)
            end = float(duration)
    if track_ids is not None and target_id not in set(int(t) for t in track_ids):
        return fail(AnswerFailure.UNKNOWN_ID, body, target_id=target_id, start=start, end=end)
    return ParsedAnswer(True, target_id, start, end, None, reasoning, body, well_formatted)


def format_answer(target_id: int, start: float, end: float) -> str:
    """The answer body in the trained format (used by grammars, tests and training targets)."""
    return f"Target ID: {int(target_id)}, Time range: {start:.2f} to {end:.2f}"


# ------------------------------------------------------------------------------------------------
# The answer language for constrained decoding. One definition (stvg_r1_answer.gbnf) serves
# llama.cpp (GBNF) and, as an equivalent regex, transformers and vLLM-style servers.

GRAMMAR_FILE = "stvg_r1_answer.gbnf"
#: Characters allowed inside <think>: printable ASCII except '<', and newlines. ASCII keeps one
#: character >= one token, so a bound in characters is also a bound in tokens.
THINK_CHARS_GBNF = r"[\x20-\x3b\x3d-\x7e\n]"
THINK_CHARS_REGEX = r"[\x20-\x3b\x3d-\x7e\n]"
#: Tokens an answer block needs at worst (one character per token): "</think>", spacing and
#: "<answer>Target ID: NNNNNN, Time range: NNNNN.NN to NNNNN.NN</answer>".
ANSWER_RESERVE_TOKENS = 96


def think_budget_chars(max_new_tokens: int) -> int:
    """Longest <think> text that still leaves room for the answer within `max_new_tokens`."""
    return max(0, int(max_new_tokens) - ANSWER_RESERVE_TOKENS)


def _id_alternatives(track_ids: Collection[int] | None) -> list[str] | None:
    ids = sorted({int(t) for t in track_ids if int(t) > 0}) if track_ids is not None else None
    return [str(t) for t in ids] if ids else None


def _grammar_source() -> str:
    from importlib import resources

    return resources.files("stvg_ros.core").joinpath(GRAMMAR_FILE).read_text(encoding="utf-8")


def _set_rule(grammar: str, name: str, body: str) -> str:
    pattern = re.compile(rf"^{re.escape(name)}\s*::=.*$", re.MULTILINE)
    if not pattern.search(grammar):
        raise RuntimeError(f"{GRAMMAR_FILE} has no rule {name!r}")
    return pattern.sub(lambda _: f"{name} ::= {body}", grammar, count=1)


#: Clips longer than this many seconds get no per-second bound on the answer's times.
MAX_ENUMERATED_SECONDS = 3600


def _time_alternatives(max_seconds: float | None) -> tuple[list[str], list[str]] | None:
    """Times 0.00..max_seconds as (whole seconds with any two decimals, "S.DD" strings of the last
    second); None when unbounded or too long to enumerate."""
    if max_seconds is None or not (0 <= max_seconds <= MAX_ENUMERATED_SECONDS):
        return None
    hundredths = math.floor(float(max_seconds) * 100 + 1e-6)
    last_whole, last_frac = divmod(hundredths, 100)
    full = [str(s) for s in range(last_whole)]
    last = [f"{last_whole}.{d:02d}" for d in range(last_frac + 1)]
    return full, last


def answer_grammar(
    *,
    reasoning: bool = True,
    track_ids: Collection[int] | None = None,
    max_think_chars: int = 416,
    max_seconds: float | None = None,
) -> str:
    """GBNF for one answer: `<think>…</think>` (reasoning) then the answer block, nothing after.

    `track_ids` limits the ID to those drawn on the frames; `max_seconds` limits both times to
    [0, max_seconds] (the clip); `max_think_chars` bounds the reasoning (see `think_budget_chars`)
    so generation cannot run out of tokens before the answer.
    """
    grammar = _grammar_source()
    grammar = _set_rule(grammar, "root", "think ws answer" if reasoning else "answer")
    grammar = _set_rule(grammar, "think-text", f"{THINK_CHARS_GBNF}{{0,{max(0, int(max_think_chars))}}}")
    ids = _id_alternatives(track_ids)
    if ids:
        grammar = _set_rule(grammar, "target-id", " | ".join(f'"{t}"' for t in ids))
    times = _time_alternatives(max_seconds)
    if times:
        full, last = times
        options = [f'({_gbnf_choice(full)}) "." [0-9] [0-9]'] if full else []
        options.append(f"({_gbnf_choice(last)})")
        grammar = _set_rule(grammar, "seconds", " | ".join(options))
    return grammar


def _gbnf_choice(literals: list[str]) -> str:
    return " | ".join(f'"{text}"' for text in literals)


def answer_regex(
    *,
    reasoning: bool = True,
    track_ids: Collection[int] | None = None,
    max_think_chars: int = 416,
    max_seconds: float | None = None,
) -> str:
    """The language of `answer_grammar` as a regular expression (full match)."""
    ids = _id_alternatives(track_ids)
    target = "(?:" + "|".join(ids) + ")" if ids else r"[1-9][0-9]{0,5}"
    times = _time_alternatives(max_seconds)
    if times:
        full, last = times
        options = ["(?:" + "|".join(full) + r")\.[0-9]{2}"] if full else []
        options.append("|".join(re.escape(t) for t in last))
        seconds = "(?:" + "|".join(options) + ")"
    else:
        seconds = r"[0-9]{1,5}\.[0-9]{2}"
    answer = rf"<answer>Target ID: {target}, Time range: {seconds} to {seconds}</answer>"
    if not reasoning:
        return answer
    return rf"<think>{THINK_CHARS_REGEX}{{0,{max(0, int(max_think_chars))}}}</think>[ \n]{{0,2}}" + answer
