"""The built-in procedural tasks: enough of them in every family, records every phrasing of
their formatter takes, short, reproducible and varied, and labels right (recomputed here from
the record's text) and balanced."""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest

from tempering.plugins import tasks, tasks_language
from tests.conftest import REGISTRY

FORMATTERS = ("classification", "extraction", "translation", "summarization", "qa", "nli")
# Listed from the modules (importing them registers nothing); the registry is read in the tests.
FAMILIES = {f: gs for m in (tasks, tasks_language) for f, gs in m.FAMILIES.items()}
NAMES = [g.__name__ for gs in FAMILIES.values() for g in gs]
LABELLED = [g.__name__ for f in ("classification", "nli") for g in FAMILIES[f]]
ANSWER_FIELDS = {
    "extraction": "answer",
    "translation": "target",
    "summarization": "summary",
    "qa": "answer",
}
NLI_LABELS = ("entailment", "neutral", "contradiction")
COUNT = 300


def _records(name: str, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    generate = REGISTRY.get("task", name).generate
    return [generate(rng) for _ in range(COUNT)]


def test_enough_tasks_in_every_family():
    names = REGISTRY.names("task")
    assert sorted(names) == sorted(NAMES) and len(names) >= 24
    families = Counter(REGISTRY.get("task", n).family for n in names)
    assert set(families) == set(FORMATTERS)
    assert min(families.values()) >= 3, families
    for name in names:
        task = REGISTRY.get("task", name)
        assert re.fullmatch(r"[a-z][a-z_]*", name) and task.family == task.formatter
        assert task.description and "\n" not in task.description
        assert task.formatter in REGISTRY.names("task_formatter")


def test_both_modules_use_the_same_syllables():
    assert tasks.SYLLABLES == tasks_language.SYLLABLES and len(set(tasks.SYLLABLES)) == 20


@pytest.mark.parametrize("name", NAMES)
def test_records_format_in_every_phrasing_and_are_short(name):
    task = REGISTRY.get("task", name)
    formatter = REGISTRY.get("task_formatter", task.formatter)
    for record in _records(name):
        assert set(formatter.fields) <= set(record)
        for phrasing in range(formatter.phrasings):
            instruction, answer = formatter.format(record, phrasing)
            assert answer and answer == answer.strip()
            assert len(instruction) + len(answer) < 300, (instruction, answer)


@pytest.mark.parametrize("name", NAMES)
def test_records_are_reproducible_and_varied(name):
    records = _records(name)
    assert records == _records(name) and records != _records(name, seed=1)
    distinct = {json.dumps(r, sort_keys=True) for r in records}
    assert len(distinct) >= 0.9 * COUNT, len(distinct)
    formatter = REGISTRY.get("task", name).formatter
    if formatter not in ("classification", "nli"):
        answers = {r[ANSWER_FIELDS[formatter]] for r in records}
        assert len(answers) >= 5, answers  # not the same few answers for all


@pytest.mark.parametrize("name", LABELLED)
def test_label_classes_are_balanced(name):
    task = REGISTRY.get("task", name)
    if task.formatter == "classification":
        # the label's place among the options: "even"/"odd", or the first or second number
        classes = Counter(r["options"].index(r["label"]) for r in _records(name))
        assert set(classes) == set(range(len(_records(name)[0]["options"])))
    else:
        classes = Counter(r["label"] for r in _records(name))
        assert set(classes) == set(NLI_LABELS)
    assert min(classes.values()) >= 0.15 * COUNT, classes


def _numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", text)]


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _comparison(r: dict) -> str:
    opposite = {"taller": "shorter", "older": "younger", "faster": "slower"}
    opposite.update({v: k for k, v in opposite.items()})
    x, more, y = re.fullmatch(r"(\w+) is (\w+) than (\w+)\.", r["premise"]).groups()
    a, negated, rel, b = re.fullmatch(
        r"(\w+) is (not )?(\w+) than (\w+)\.", r["hypothesis"]
    ).groups()
    if {a, b} != {x, y}:
        return "neutral"
    holds = (a, rel, b) in {(x, more, y), (y, opposite[more], x)}
    return "entailment" if holds != bool(negated) else "contradiction"


def _count_claim(r: dict) -> str:
    owner, n = re.fullmatch(r"(\w+) has (\d+) \w+\.", r["premise"]).groups()
    who, claim, m = re.fullmatch(
        r"(\w+) has (more than|fewer than|exactly) (\d+) \w+\.", r["hypothesis"]
    ).groups()
    if who != owner:
        return "neutral"
    n, m = int(n), int(m)
    holds = {"more than": n > m, "fewer than": n < m, "exactly": n == m}[claim]
    return "entailment" if holds else "contradiction"


def _attendance(r: dict) -> str:
    came, absent = re.fullmatch(r"(.+) came, but (\w+) did not\.", r["premise"]).groups()
    guests = re.split(r", | and ", came)
    who, negated = re.fullmatch(r"(\w+) (did not come|came)\.", r["hypothesis"]).groups()
    if who not in (*guests, absent):
        return "neutral"
    holds = (who in guests) == (negated == "came")
    return "entailment" if holds else "contradiction"


def _location(r: dict) -> str:
    person, room = re.fullmatch(r"(\w+) is in the (\w+)\.", r["premise"]).groups()
    who, negated, where = re.fullmatch(r"(\w+) is (not )?in the (\w+)\.", r["hypothesis"]).groups()
    if who == "Someone":
        who = person  # "Someone is in the kitchen." holds when the person is in it
    if who != person:
        return "neutral"
    return "entailment" if (where == room) != bool(negated) else "contradiction"


def _most_frequent(r: dict) -> str:
    (top, count), (_, second) = Counter(r["document"].split()).most_common(2)
    assert count > second
    return top


# task -> (the record's field that answers, that answer computed from the record's text)
CHECKS = {
    "parity": ("label", lambda r: ("even", "odd")[int(r["text"]) % 2]),
    "sorted_list": ("label", lambda r: _yes(_numbers(r["text"]) == sorted(_numbers(r["text"])))),
    "larger_number": ("label", lambda r: str(max(_numbers(r["text"])))),
    "has_syllable": (
        "label",
        lambda r: _yes(re.search(r'"(..)"', r["question"])[1] in re.findall("..", r["text"])),
    ),
    "rhyme": ("label", lambda r: _yes(len({w[-2:] for w in r["text"].split(", ")}) == 1)),
    "key_value": (
        "answer",
        lambda r: dict(p.split("=") for p in r["text"].split("; "))[r["target"].split()[-1]],
    ),
    "longest_word": ("answer", lambda r: max(r["text"].split(), key=len)),
    "addition": ("answer", lambda r: str(sum(_numbers(r["question"])))),
    "subtraction": (
        "answer",
        lambda r: str(_numbers(r["question"])[0] - _numbers(r["question"])[1]),
    ),
    "word_count": ("answer", lambda r: str(len(r["context"].split()))),
    "word_before": (
        "answer",
        lambda r: r["context"].split(", ")[
            r["context"].split(", ").index(r["question"].split()[-1][:-1]) - 1
        ],
    ),
    "number_range": (
        "summary",
        lambda r: "{} to {}".format(min(_numbers(r["document"])), max(_numbers(r["document"]))),
    ),
    "total_count": (
        "summary",
        lambda r: f"{sum(_numbers(r['document']))} {r['document'].split()[3][:-1]} in all",
    ),
    "most_frequent_word": ("summary", _most_frequent),
    "reverse_order": ("target", lambda r: " ".join(r["source"].split()[::-1])),
    "rotate_syllables": ("target", lambda r: " ".join(w[2:] + w[:2] for w in r["source"].split())),
    "comparison": ("label", _comparison),
    "count_claim": ("label", _count_claim),
    "attendance": ("label", _attendance),
    "location": ("label", _location),
}


@pytest.mark.parametrize("name", list(CHECKS))
def test_answers_are_right(name):
    field, expected = CHECKS[name]
    for record in _records(name):
        assert record[field] == expected(record), record


def test_the_cipher_tasks_are_each_others_inverse():
    cipher = tasks_language.CIPHER
    assert sorted(cipher.values()) == sorted(cipher) and all(k != v for k, v in cipher.items())
    # both draw their plain words first, so one seed gives the same words in both directions
    for encoded, decoded in zip(_records("cipher_encode"), _records("cipher_decode"), strict=True):
        assert (encoded["source"], encoded["target"]) == (decoded["target"], decoded["source"])
        assert encoded["source"] != encoded["target"]


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zero"),
        (7, "seven"),
        (13, "thirteen"),
        (40, "forty"),
        (47, "forty-seven"),
        (100, "one hundred"),
        (312, "three hundred twelve"),
        (999, "nine hundred ninety-nine"),
    ],
)
def test_number_words(n, words):
    assert tasks_language.number_words(n) == words


def test_the_number_tasks_are_each_others_inverse():
    for digits, spelled in zip(
        _records("digits_to_words"), _records("words_to_digits"), strict=True
    ):
        assert (digits["source"], digits["target"]) == (spelled["target"], spelled["source"])
        n = _numbers(digits["source"])[0]
        assert tasks_language.number_words(n) in digits["target"]
