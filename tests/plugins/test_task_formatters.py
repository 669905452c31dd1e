"""The built-in task formatters: every phrasing on hand-written records, labels given as
names or indices, their options, and bad records named by their field."""

from __future__ import annotations

import itertools

import pytest

from tempering import BadRecordError
from tests.conftest import REGISTRY

NLI_ANSWERS = ["yes", "it is not possible to tell", "no"]

# name -> (record, the texts every instruction shows, the answer)
CASES = {
    "classification": (
        {
            "text": "417",
            "question": "Is the number even or odd?",
            "options": ["even", "odd"],
            "label": "odd",
        },
        ["417", "Is the number even or odd?", "even", "odd"],
        "odd",
    ),
    "extraction": (
        {"text": "kalo lives in room 12.", "target": "the number of the room", "answer": "12"},
        ["kalo lives in room 12.", "the number of the room"],
        "12",
    ),
    "translation": (
        {
            "source": "kalo mine",
            "source_language": "Lomi",
            "target_language": "Veta",
            "target": "rusi tapo",
        },
        ["kalo mine", "Lomi", "Veta"],
        "rusi tapo",
    ),
    "summarization": (
        {"document": "ka went to lo. ka went to mi.", "summary": "ka went to lo and mi."},
        ["ka went to lo. ka went to mi."],
        "ka went to lo and mi.",
    ),
    "qa": (
        {
            "context": "kalo is red. mine is blue.",
            "question": "What color is mine?",
            "answer": "blue",
        },
        ["kalo is red. mine is blue.", "What color is mine?"],
        "blue",
    ),
    "nli": (
        {
            "premise": "kalo is taller than mine.",
            "hypothesis": "mine is shorter than kalo.",
            "label": "entailment",
        },
        ["kalo is taller than mine.", "mine is shorter than kalo.", *NLI_ANSWERS],
        "yes",
    ),
}


def _formatter(name: str):
    return REGISTRY.get("task_formatter", name)


def _every_phrasing():
    return [(name, p) for name in CASES for p in range(5)]


def test_the_six_formatters_are_registered_with_enough_phrasings():
    assert set(CASES) <= set(REGISTRY.names("task_formatter"))
    for name in CASES:
        formatter = _formatter(name)
        # one phrasing held out for evaluation still leaves three to train on
        assert formatter.phrasings >= 4, name
        assert formatter.description, name


@pytest.mark.parametrize(("name", "phrasing"), _every_phrasing())
def test_every_phrasing_shows_the_fields_and_answers_exactly(name, phrasing):
    record, shown, answer = CASES[name]
    formatter = _formatter(name)
    if phrasing >= formatter.phrasings:
        pytest.skip(f"{name} has {formatter.phrasings} phrasings")
    instruction, got = formatter.format(dict(record), phrasing)
    assert got == answer
    for text in shown:
        assert text in instruction, (text, instruction)
    assert instruction == instruction.rstrip() and "{" not in instruction
    assert set(formatter.fields) <= set(record)


@pytest.mark.parametrize("name", list(CASES))
def test_the_phrasings_of_a_formatter_differ(name):
    record, _, _ = CASES[name]
    formatter = _formatter(name)
    records = [record]
    if name == "qa":  # each phrasing has a form without context too
        records.append({"question": record["question"], "answer": record["answer"]})
    for one in records:
        instructions = [formatter.format(one, p)[0] for p in range(formatter.phrasings)]
        for a, b in itertools.combinations(instructions, 2):
            assert a != b


def test_qa_without_a_context_still_asks_the_question():
    formatter = _formatter("qa")
    for p in range(formatter.phrasings):
        instruction, answer = formatter.format({"question": "What is 2 + 3?", "answer": 5}, p)
        assert "What is 2 + 3?" in instruction and answer == "5"
        assert "Context" not in instruction and "text" not in instruction.lower()


def test_values_are_stripped():
    formatter = _formatter("summarization")
    instruction, answer = formatter.format({"document": "  ka lo.\n", "summary": " ka. "}, 2)
    assert answer == "ka." and "ka lo." in instruction and instruction == instruction.rstrip()


def test_int_labels_index_the_options():
    classification, nli = _formatter("classification"), _formatter("nli")
    record = {"text": "417", "question": "Even or odd?", "options": ["even", "odd"]}
    assert classification.format({**record, "label": 1}, 0)[1] == "odd"
    assert classification.format({**record, "label": 0}, 3)[1] == "even"
    premise = {"premise": "ka came.", "hypothesis": "lo came."}
    for label, answer in enumerate(NLI_ANSWERS):
        assert nli.format({**premise, "label": label}, 1)[1] == answer
    for label, answer in zip(("Entailment", "neutral", "contradiction"), NLI_ANSWERS, strict=True):
        assert nli.format({**premise, "label": label}, 4)[1] == answer


def test_choices_give_or_replace_the_options():
    formatter = _formatter("classification")
    record = {"text": "the soup was great", "label": 1}
    for p in range(formatter.phrasings):
        instruction, answer = formatter.format(record, p, choices=["negative", "positive"])
        assert answer == "positive" and "negative" in instruction
    # a record without a question gets a generic one
    assert "Which option fits?" in formatter.format(record, 0, choices=["no", "yes"])[0]
    replaced = {**CASES["classification"][0], "label": "pair"}
    instruction, answer = formatter.format(replaced, 0, choices=["pair", "odd"])
    assert answer == "pair" and instruction.endswith("Options:\n- pair\n- odd")
    with pytest.raises(BadRecordError) as info:
        formatter.format(record, 0, choices=["only"])
    assert (info.value.kind, info.value.field) == ("bad_type", "choices")


def test_answers_replace_the_nli_answers():
    formatter = _formatter("nli")
    record = {"premise": "ka came.", "hypothesis": "lo came.", "label": "contradiction"}
    for p in range(formatter.phrasings):
        instruction, answer = formatter.format(record, p, answers=["true", "maybe", "false"])
        assert answer == "false" and all(a in instruction for a in ("true", "maybe", "false"))
        assert "possible" not in instruction
    with pytest.raises(BadRecordError) as info:
        formatter.format(record, 0, answers=["true", "false"])
    assert (info.value.kind, info.value.field) == ("bad_type", "answers")


@pytest.mark.parametrize("name", list(CASES))
def test_a_missing_or_empty_required_field_is_named(name):
    record, _, _ = CASES[name]
    formatter = _formatter(name)
    for field in formatter.fields:
        for broken in ({k: v for k, v in record.items() if k != field}, {**record, field: " "}):
            with pytest.raises(BadRecordError) as info:
                formatter.format(broken, 0)
            assert (info.value.kind, info.value.field) == ("missing_field", field)


def test_classification_needs_options_from_the_record_or_choices():
    record = {"text": "417", "question": "Even or odd?", "label": "odd"}
    with pytest.raises(BadRecordError) as info:
        _formatter("classification").format(record, 0)
    assert (info.value.kind, info.value.field) == ("missing_field", "options")


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("classification", "maybe"),
        ("classification", 2),
        ("classification", -1),
        ("classification", True),
        ("nli", "unknown"),
        ("nli", 3),
        ("nli", 1.0),
    ],
)
def test_a_label_outside_the_options_is_named(name, label):
    record, _, _ = CASES[name]
    with pytest.raises(BadRecordError) as info:
        _formatter(name).format({**record, "label": label}, 0)
    assert (info.value.kind, info.value.field) == ("bad_type", "label")


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("classification", "text", ["417"]),
        ("classification", "options", "even, odd"),
        ("extraction", "target", {"a": 1}),
        ("qa", "context", ["x"]),
        ("nli", "premise", True),
    ],
)
def test_a_field_of_the_wrong_type_is_named(name, field, value):
    record, _, _ = CASES[name]
    with pytest.raises(BadRecordError) as info:
        _formatter(name).format({**record, field: value}, 0)
    assert (info.value.kind, info.value.field) == ("bad_type", field)


@pytest.mark.parametrize("name", list(CASES))
def test_a_phrasing_out_of_range_is_a_programming_error(name):
    formatter = _formatter(name)
    for phrasing in (formatter.phrasings, -1):
        with pytest.raises(ValueError) as info:
            formatter.format(CASES[name][0], phrasing)
        assert not isinstance(info.value, BadRecordError)
