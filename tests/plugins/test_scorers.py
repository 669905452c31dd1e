"""The built-in verifiers and the code scorer (the sandbox itself: tests/generate/test_sandbox.py)."""

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


def test_python_tests_runs_the_first_fenced_block_against_the_reference_tests():
    from tempering.generate.sandbox import _namespaces_work

    if _namespaces_work() is not None:
        import pytest

        pytest.skip(f"no namespaces: {_namespaces_work()}")
    tests = "assert square(3) == 9\nassert square(-2) == 4"
    completions = [
        "Here it is:\n```python\ndef square(x):\n    return x * x\n```\nDone.",
        "def square(x):\n    return x * x\n",          # no fence: the whole completion
        "```python\ndef square(x):\n    return x + x\n```",
        "```python\nimport sys\nsys.exit(0)\n```",       # exits before the tests
        "```python\nwhile True:\n    pass\n```",
    ]
    got = s.python_tests(P * 6, [*completions, completions[0]], [tests] * 5 + [None],
                         cpu_seconds=1, wall_seconds=3)
    assert got == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
