"""Record readers (framework/data/records.py) and the encoder's errors on unusable conversations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tempering.chat.encoding import IGNORE_INDEX, encode_conversation
from tempering.chat.templates import TemplateError
from tempering.data.records import BadRecordError, detect_format, validate
from tests.conftest import REGISTRY, to_messages, trained_texts

# -- readers ----------------------------------------------------------------------------------


def test_alpaca_without_input() -> None:
    record = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
    assert to_messages(record, "alpaca") == [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ]


@pytest.mark.parametrize("extra", [{}, {"input": None}, {"input": "  \n "}])
def test_alpaca_blank_or_missing_input_is_left_out(extra: dict[str, Any]) -> None:
    record = {"instruction": "Name a colour.", "output": "Blue.", **extra}
    assert to_messages(record, "alpaca")[0] == {"role": "user", "content": "Name a colour."}


def test_alpaca_with_input_follows_the_instruction() -> None:
    record = {"instruction": "Translate to French.", "input": "cat", "output": "chat"}
    assert to_messages(record, "alpaca") == [
        {"role": "user", "content": "Translate to French.\n\ncat"},
        {"role": "assistant", "content": "chat"},
    ]


def test_prompt_completion() -> None:
    record = {"prompt": "2+2=", "completion": "4"}
    assert to_messages(record, "prompt_completion") == [
        {"role": "user", "content": "2+2="},
        {"role": "assistant", "content": "4"},
    ]


def test_messages_keep_train_flags_as_booleans() -> None:
    record = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi?", "train": 0},
            {"role": "assistant", "content": "Hello.", "train": False},
            {"role": "user", "content": "Bye?"},
            {"role": "assistant", "content": "Goodbye.", "train": 1},
        ]
    }
    assert to_messages(record, "messages") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi?", "train": False},
        {"role": "assistant", "content": "Hello.", "train": False},
        {"role": "user", "content": "Bye?"},
        {"role": "assistant", "content": "Goodbye.", "train": True},
    ]


def test_sharegpt_roles() -> None:
    record = {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Hi?"},
            {"from": "gpt", "value": "Hello."},
            {"from": "Human", "value": "Bye?"},
            {"from": "GPT", "value": "Goodbye."},
        ]
    }
    assert to_messages(record, "sharegpt") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye?"},
        {"role": "assistant", "content": "Goodbye."},
    ]


def test_sharegpt_fastchat_records(shared_data: Path) -> None:
    records = json.loads((shared_data / "fastchat_dummy_conversation.json").read_text("utf-8"))
    for record in records[:50]:
        messages = to_messages(record)  # auto-detected as sharegpt
        assert len(messages) == len(record["conversations"])
        assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)
        assert [m["content"] for m in messages] == [t["value"] for t in record["conversations"]]


@pytest.mark.parametrize(
    ("record", "fmt"),
    [
        ({"messages": [], "instruction": "x"}, "messages"),
        ({"conversations": []}, "sharegpt"),
        ({"instruction": "x", "output": "y"}, "alpaca"),
        (
            {"instruction": "x", "input": "", "output": "y", "prompt": "p", "completion": "c"},
            "alpaca",
        ),
        ({"prompt": "p", "completion": "c"}, "prompt_completion"),
    ],
)
def test_detect_format(record: dict[str, Any], fmt: str) -> None:
    assert detect_format(record, REGISTRY) == fmt


def test_auto_detection_reads_each_format() -> None:
    expected = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    for record in (
        {"instruction": "Q", "output": "A"},
        {"prompt": "Q", "completion": "A"},
        {"messages": expected},
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
    ):
        assert to_messages(record) == expected
        assert to_messages(record, "auto") == expected


@pytest.mark.parametrize("record", [{"prompt": "Q"}, {"text": "Q A"}, {}])
def test_undetectable_record(record: dict[str, Any]) -> None:
    with pytest.raises(BadRecordError, match="cannot tell the record's format") as err:
        to_messages(record)
    assert err.value.kind == "missing_field"


def test_unknown_format_name() -> None:
    with pytest.raises(ValueError, match="unknown record_format 'jsonl'") as err:
        to_messages({"prompt": "Q", "completion": "A"}, "jsonl")
    assert not isinstance(err.value, BadRecordError)


def test_record_must_be_an_object() -> None:
    with pytest.raises(BadRecordError) as err:
        to_messages(["not", "a", "dict"])  # type: ignore[arg-type]
    assert err.value.kind == "bad_type"


# -- system_prompt ---------------------------------------------------------------------------


def test_system_prompt_is_inserted_when_there_is_none() -> None:
    messages = to_messages({"prompt": "Q", "completion": "A"}, system_prompt="Be brief.")
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A"},
    ]


def test_system_prompt_does_not_replace_an_existing_one() -> None:
    record = {
        "messages": [
            {"role": "system", "content": "Own system."},
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A"},
        ]
    }
    messages = to_messages(record, system_prompt="Be brief.")
    assert [m["content"] for m in messages] == ["Own system.", "Q", "A"]


def test_empty_system_prompt_inserts_nothing() -> None:
    assert len(to_messages({"prompt": "Q", "completion": "A"}, system_prompt="")) == 2


# -- bad records: kind and field ---------------------------------------------------------------

_A = {"role": "assistant", "content": "A"}
_U = {"role": "user", "content": "Q"}
_GPT = {"from": "gpt", "value": "A"}
_HUMAN = {"from": "human", "value": "Q"}


BAD_RECORDS = [
    # missing fields
    ("alpaca", {"output": "A"}, "missing_field", "instruction"),
    ("alpaca", {"instruction": "Q"}, "missing_field", "output"),
    ("prompt_completion", {"prompt": "Q"}, "missing_field", "completion"),
    ("prompt_completion", {"completion": "A"}, "missing_field", "prompt"),
    ("messages", {"conversations": []}, "missing_field", "messages"),
    ("messages", {"messages": [_U, {"content": "A"}]}, "missing_field", "messages[1].role"),
    ("messages", {"messages": [_U, {"role": "assistant"}]}, "missing_field", "messages[1].content"),
    pytest.param(
        "messages",
        {"messages": [_U, {"role": "assistant", "content": None}]},
        "missing_field",
        "messages[1].content",
        id="messages-null-content",
    ),
    ("sharegpt", {"messages": []}, "missing_field", "conversations"),
    (
        "sharegpt",
        {"conversations": [{"value": "Q"}, _GPT]},
        "missing_field",
        "conversations[0].from",
    ),
    (
        "sharegpt",
        {"conversations": [_HUMAN, {"from": "gpt"}]},
        "missing_field",
        "conversations[1].value",
    ),
    # wrong types
    ("alpaca", {"instruction": 3, "output": "A"}, "bad_type", "instruction"),
    ("alpaca", {"instruction": "Q", "input": ["x"], "output": "A"}, "bad_type", "input"),
    ("alpaca", {"instruction": "Q", "output": {"text": "A"}}, "bad_type", "output"),
    ("prompt_completion", {"prompt": "Q", "completion": 4}, "bad_type", "completion"),
    ("messages", {"messages": "Q A"}, "bad_type", "messages"),
    ("messages", {"messages": [_U, "A"]}, "bad_type", "messages[1]"),
    pytest.param(
        "messages",
        {"messages": [_U, {"role": "assistant", "content": [{"type": "text"}]}]},
        "bad_type",
        "messages[1].content",
        id="messages-nonstring-content",
    ),
    ("sharegpt", {"conversations": {"from": "human"}}, "bad_type", "conversations"),
    ("sharegpt", {"conversations": [_HUMAN, ["gpt", "A"]]}, "bad_type", "conversations[1]"),
    (
        "sharegpt",
        {"conversations": [_HUMAN, {"from": "gpt", "value": 4}]},
        "bad_type",
        "conversations[1].value",
    ),
    # unknown roles
    (
        "messages",
        {"messages": [{"role": "robot", "content": "Q"}, _A]},
        "unknown_role",
        "messages[0].role",
    ),
    (
        "messages",
        {"messages": [_U, _A, {"role": "human", "content": "Q2"}]},
        "unknown_role",
        "messages[2].role",
    ),
    (
        "sharegpt",
        {"conversations": [{"from": "robot", "value": "Q"}, _GPT]},
        "unknown_role",
        "conversations[0].from",
    ),
    # empty assistant content
    (
        "messages",
        {"messages": [_U, {"role": "assistant", "content": ""}]},
        "empty_assistant",
        "messages[1].content",
    ),
    (
        "messages",
        {"messages": [_U, {"role": "assistant", "content": " \n\t"}]},
        "empty_assistant",
        "messages[1].content",
    ),
    (
        "prompt_completion",
        {"prompt": "Q", "completion": "  "},
        "empty_assistant",
        "completion",
    ),
    pytest.param(
        "sharegpt",
        {"conversations": [_HUMAN, {"from": "gpt", "value": "  "}]},
        "empty_assistant",
        "conversations[1].value",
        id="sharegpt-empty-assistant",
    ),
    pytest.param(
        "alpaca",
        {"instruction": "Q", "output": ""},
        "empty_assistant",
        "output",
        id="alpaca-empty-output",
    ),
    ("messages", {"messages": []}, "no_messages", None),
]


@pytest.mark.parametrize(("fmt", "record", "kind", "field"), BAD_RECORDS)
def test_bad_record(fmt: str, record: dict[str, Any], kind: str, field: str | None) -> None:
    with pytest.raises(BadRecordError) as err:
        to_messages(record, fmt)
    assert (err.value.kind, err.value.field) == (kind, field)
    assert str(err.value)  # a message for people, not just a kind


def test_validate_returns_the_messages_unchanged() -> None:
    messages = [
        {"role": "user", "content": "Q"},
        {"role": "tool", "content": "{}"},
        {"role": "assistant", "content": "A", "train": True},
    ]
    assert validate(messages) is messages


# -- the encoder on unusable conversations ---------------------------------------------------


TWO_TURNS = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello friend"},
    {"role": "user", "content": "Bye now"},
    {"role": "assistant", "content": "Goodbye friend"},
]


def test_assistant_first_message_is_a_template_error(tiny_tokenizer) -> None:
    messages = [{"role": "assistant", "content": "I speak first"}] + TWO_TURNS
    with pytest.raises(TemplateError, match="message 0"):
        encode_conversation(messages, tiny_tokenizer, chat_template="chatml", registry=REGISTRY)
    # Untrained, a leading assistant message is only context.
    enc = encode_conversation(
        messages, tiny_tokenizer, chat_template="chatml", masking="last_assistant", registry=REGISTRY
    )
    assert trained_texts(tiny_tokenizer, enc) == ["Goodbye friend<|im_end|>"]


def test_train_on_eot_false_leaves_the_end_of_turn_untrained(tiny_tokenizer) -> None:
    tok = tiny_tokenizer
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    with_eot = encode_conversation(TWO_TURNS, tok, chat_template="chatml", registry=REGISTRY)
    without = encode_conversation(TWO_TURNS, tok, chat_template="chatml", train_on_eot=False, registry=REGISTRY)
    assert with_eot.input_ids == without.input_ids
    assert trained_texts(tok, with_eot) == ["Hello friend<|im_end|>", "Goodbye friend<|im_end|>"]
    assert trained_texts(tok, without) == ["Hello friend", "Goodbye friend"]
    assert eot not in [label for label in without.labels if label != IGNORE_INDEX]
    assert with_eot.num_supervised == without.num_supervised + 2


MY_TEMPLATE = (
    "{% for m in messages %}<|my_start|>{{ m['role'] }}\n{{ m['content'] }}<|my_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|my_start|>assistant\n{% endif %}"
)


def test_missing_end_of_turn_token_is_a_template_error(tiny_tokenizer) -> None:
    assert "<|my_end|>" not in tiny_tokenizer.get_added_vocab()
    with pytest.raises(TemplateError, match=r"writes <\|my_start\|> \(\d+ pieces\), <\|my_end\|>"):
        encode_conversation(TWO_TURNS, tiny_tokenizer, chat_template=MY_TEMPLATE,
                            train_on_eot=False, registry=REGISTRY)  # a split marker is refused either way
    with pytest.raises(TemplateError, match="train_on_eot") as err:
        encode_conversation(TWO_TURNS, tiny_tokenizer, chat_template=MY_TEMPLATE,
                            allow_split_markers=True, registry=REGISTRY)
    assert "message 1" in str(err.value)
    enc = encode_conversation(TWO_TURNS, tiny_tokenizer, chat_template=MY_TEMPLATE,
                              train_on_eot=False, allow_split_markers=True, registry=REGISTRY)
    assert trained_texts(tiny_tokenizer, enc) == ["Hello friend", "Goodbye friend"]


def test_registering_the_marker_makes_it_the_end_of_turn(make_tokenizer) -> None:
    tok = make_tokenizer(MY_TEMPLATE)
    enc = encode_conversation(TWO_TURNS, tok, chat_template=MY_TEMPLATE, registry=REGISTRY)
    assert trained_texts(tok, enc) == ["Hello friend<|my_end|>", "Goodbye friend<|my_end|>"]


def test_masking_that_selects_a_user_message_is_a_template_error(tiny_tokenizer) -> None:
    messages = [dict(m) for m in TWO_TURNS]
    messages[0]["train"] = True
    with pytest.raises(TemplateError, match="message 0 with role 'user'"):
        encode_conversation(messages, tiny_tokenizer, chat_template="chatml", masking="per_message", registry=REGISTRY)


def test_nothing_selected_is_an_error(tiny_tokenizer) -> None:
    messages = [dict(m, train=False) for m in TWO_TURNS]
    with pytest.raises(ValueError, match="selected no message"):
        encode_conversation(messages, tiny_tokenizer, chat_template="chatml", masking="per_message", registry=REGISTRY)


def test_mt_bench_records_become_conversations_with_their_answers():
    from tempering.data.records import to_messages
    from tests.conftest import REGISTRY

    record = {"question_id": 1, "turns": ["Q1?", "Q2?"], "reference": ["A1.", "A2."]}
    assert detect_format(record, REGISTRY) == "mt_bench"
    assert to_messages(record, "mt_bench", registry=REGISTRY) == [
        {"role": "user", "content": "Q1?"}, {"role": "assistant", "content": "A1."},
        {"role": "user", "content": "Q2?"}, {"role": "assistant", "content": "A2."}]
    mine = {"question_id": 1, "turns": ["Q1?"], "answers": ["Mine."]}
    assert to_messages(mine, "mt_bench", registry=REGISTRY, options={"answers": "answers"})[1] \
        == {"role": "assistant", "content": "Mine."}
    with pytest.raises(BadRecordError, match="one answer per turn") as err:
        to_messages({**record, "reference": ["A1."]}, "mt_bench", registry=REGISTRY)
    assert err.value.field == "reference"
    # without answers, the questions alone: a prompt for multi-turn generation
    assert to_messages({"question_id": 2, "turns": ["Q?", "Q2?"]}, "mt_bench",
                       registry=REGISTRY) == [{"role": "user", "content": "Q?"},
                                              {"role": "user", "content": "Q2?"}]
