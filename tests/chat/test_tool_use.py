"""Tool use in multi-turn conversations, with the vendors' own templates: the calls the model
writes are trained, the tools' outputs are not; exact masks written out by hand."""

from __future__ import annotations

import pytest

from tempering.chat.encoding import IGNORE_INDEX, encode_conversation
from tempering.chat.templates import TemplateError
from tests.chat.test_encoding import _vendor
from tests.conftest import REGISTRY, trained_texts

QWEN_MARKERS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")


def _call(name: str, **arguments: str) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def _conversation(content: str = "") -> list[dict]:
    return [
        {"role": "system", "content": "You can call tools."},
        {"role": "user", "content": "Weather in Oslo and in Rome?"},
        {"role": "assistant", "content": content, "tool_calls": [_call("get_weather",
                                                                       city="Oslo")]},
        {"role": "tool", "content": "OSLO-3C"},
        {"role": "assistant", "content": content, "tool_calls": [_call("get_weather",
                                                                       city="Rome")]},
        {"role": "tool", "content": "ROME-18C"},
        {"role": "assistant", "content": "Oslo 3C, Rome 18C."},
    ]


def _check(tok, enc, jinja, messages, expected):
    assert enc.input_ids == list(tok.apply_chat_template(messages, chat_template=jinja,
                                                         tokenize=True)["input_ids"])
    assert trained_texts(tok, enc) == expected
    trained = tok.decode([i for i, label in zip(enc.input_ids, enc.labels, strict=True)
                          if label != IGNORE_INDEX])
    assert "OSLO-3C" not in trained and "ROME-18C" not in trained  # tool outputs: context only
    assert "OSLO-3C" in enc.text and "ROME-18C" in enc.text


@pytest.mark.parametrize("content", ["Checking.", ""])  # words before the call, or none
@pytest.mark.parametrize("name", ["qwen2_5", "qwen3"])
def test_qwen_trains_every_call_and_the_answer(shared_data, name, content):
    jinja, tok = _vendor(shared_data, name, non_special=QWEN_MARKERS)
    messages = _conversation(content)
    enc = encode_conversation(messages, tok, chat_template=jinja, registry=REGISTRY,
                              masking="all_assistant")
    call = ((f"{content}\n" if content else "") + '<tool_call>\n{{"name": "get_weather", '
            '"arguments": {{"city": "{}"}}}}\n</tool_call><|im_end|>')
    final = ("<think>\n\n</think>\n\n" if name == "qwen3" else "") + "Oslo 3C, Rome 18C.<|im_end|>"
    _check(tok, enc, jinja, messages, [call.format("Oslo"), call.format("Rome"), final])


@pytest.mark.parametrize("name", ["llama3_1", "llama3_2"])
def test_llama_trains_the_json_calls_and_the_answer(shared_data, name):
    jinja, tok = _vendor(shared_data, name)
    messages = _conversation()
    enc = encode_conversation(messages, tok, chat_template=jinja, registry=REGISTRY,
                              masking="all_assistant")
    call = '{{"name": "get_weather", "parameters": {{"city": "{}"}}}}<|eot_id|>'
    _check(tok, enc, jinja, messages, [call.format("Oslo"), call.format("Rome"),
                                       "Oslo 3C, Rome 18C.<|eot_id|>"])
    assert "<|start_header_id|>ipython<|end_header_id|>" in enc.text  # the tool role's header


def test_llama_refuses_to_drop_the_content_of_a_call_it_would_train(shared_data):
    jinja, tok = _vendor(shared_data, "llama3_1")
    with pytest.raises(TemplateError, match="does not render its content .*Llama 3.1") as err:
        encode_conversation(_conversation("Let me check."), tok, chat_template=jinja,
                            registry=REGISTRY, masking="all_assistant")
    assert err.value.kind == "content_not_rendered"
    # Trained only at the last turn, the record is fine: no trained text is lost.
    enc = encode_conversation(_conversation("Let me check."), tok, chat_template=jinja,
                              registry=REGISTRY, masking="last_assistant")
    assert trained_texts(tok, enc) == ["Oslo 3C, Rome 18C.<|eot_id|>"]


def test_dropping_old_turns_keeps_each_tool_output_with_its_call(shared_data):
    from tempering.chat.encoding import ConversationEncoder
    from tempering.data.tokenization import encode_rows

    jinja, tok = _vendor(shared_data, "qwen2_5", non_special=QWEN_MARKERS)
    encoder = ConversationEncoder(tok, chat_template=jinja, registry=REGISTRY,
                                  masking="all_assistant")
    first = _conversation("Checking.")
    messages = first[:2] + [{"role": "assistant", "content": "Hello."},
                            {"role": "user", "content": "Now the weather, please. " * 8}] + \
        first[2:]
    whole = len(encoder.encode(messages).input_ids)
    (row,) = encode_rows(encoder, messages, whole - 5,
                         REGISTRY.get("overflow_policy", "drop_oldest_turns"))
    want = encoder.encode([messages[0]] + messages[3:])  # the first turn went, whole
    assert row["input_ids"] == want.input_ids and row["labels"] == want.labels
    assert trained_texts(tok, want)[-1] == "Oslo 3C, Rome 18C.<|im_end|>"
