"""The built-in verifiers and the code scorer (the sandbox itself: tests/generate)."""

from __future__ import annotations

from tempering.plugins import scorers as s

P = [[{"role": "user", "content": "?"}]]


def test_exact_match_collapses_whitespace_and_needs_a_reference():
    assert s.exact_match(P * 3, ["a  b", "A b", "a b"], ["a b", "a b", None]) == [1.0, 0.0, 0.0]
    assert s.exact_match(P, ["A b"], ["a b"], ignore_case=True) == [1.0]


def test_regex_answer_takes_the_last_number_and_compares_numerically():
    refs = ["Natalia sold 48 + 24 = 72 clips.\n#### 72"] * 4
    got = s.regex_answer(P * 4, ["so 48 then 72", "the answer is 72.0", "72 or 71", "none"], refs)
    assert got == [1.0, 1.0, 0.0, 0.0]
    assert s.regex_answer(P * 2, ["1,000 apples", "answer: B"], ["1000", "B"],
                          pattern=r"answer: (\w)") == [0.0, 1.0]
    assert s.regex_answer(P, ["x 3"], [None]) == [0.0]
