"""Teacher generations with reasoning: a think block becomes ``reasoning_content``, the record
survives the messages reader, and the trained span is what the model generates, think block
included (Qwen3), or the record is refused where the template drops the reasoning (DeepSeek)."""

from __future__ import annotations

import pytest

from tempering.chat.encoding import UnrenderedFieldError, encode_conversation
from tempering.generate.base import Completion, GenerationParams
from tempering.pipeline.generate import Prompt, sample_records, split_reasoning
from tempering.recipe import load_recipe
from tests.conftest import REGISTRY, trained_texts

GENERATED = "<think>\nAdd the units, then the tens.\n</think>\n\nThe sum is 57."


def _record(split: bool = True) -> dict:
    view = load_recipe({"data": {"train": [{"path": "x.jsonl"}]},
                        "generate": {"split_reasoning": split}})
    prompt = Prompt("p0", [{"role": "user", "content": "What is 23 + 34?"}], "57", "f:1")
    (record,) = sample_records(view, 1, prompt, [Completion(GENERATED, 20, "stop")],
                               GenerationParams())
    return record


def _read_back(record: dict) -> list[dict]:
    convert = REGISTRY.get("record_format", "messages").convert
    out = convert(record)
    return out[0] if isinstance(out, tuple) else out


def test_split_reasoning():
    assert split_reasoning(GENERATED) == ("The sum is 57.", "Add the units, then the tens.")
    assert split_reasoning("no think") == ("no think", None)
    assert split_reasoning("<think>unclosed") == ("<think>unclosed", None)


def test_an_endpoints_reasoning_is_kept_apart_from_the_answer():
    view = load_recipe({"data": {"train": [{"path": "x.jsonl"}]}})
    prompt = Prompt("p0", [{"role": "user", "content": "Q?"}], None, "f:1")
    (record,) = sample_records(view, 1, prompt, [Completion("A.", 2, "stop", "thought")],
                               GenerationParams())
    assert record["messages"][-1]["reasoning_content"] == "thought" and record["text"] == "A."


def test_qwen3_trains_the_generated_think_block(shared_data, make_tokenizer):
    jinja = (shared_data / "chat_templates" / "qwen3.jinja").read_text()
    tok = make_tokenizer(jinja)
    messages = _read_back(_record())
    assert messages[-1]["reasoning_content"] == "Add the units, then the tens."
    enc = encode_conversation(messages, tok, chat_template=jinja, registry=REGISTRY)
    plain = [{k: v for k, v in m.items() if k != "train"} for m in messages]
    full = tok.apply_chat_template(plain, chat_template=jinja, tokenize=False)
    prompt = tok.apply_chat_template(plain[:-1], chat_template=jinja, tokenize=False,
                                     add_generation_prompt=True)
    assert enc.input_ids == tok(full, add_special_tokens=False)["input_ids"]
    generated = full[len(prompt):]  # what the model writes after the generation prompt
    (trained,) = trained_texts(tok, enc)
    assert trained == "<think>\nAdd the units, then the tens.\n</think>\n\nThe sum is 57.<|im_end|>"
    assert generated.startswith(trained)


def test_deepseek_which_drops_reasoning_refuses_the_record(shared_data, make_tokenizer):
    jinja = (shared_data / "chat_templates" / "deepseekv3.jinja").read_text()
    tok = make_tokenizer(jinja)
    with pytest.raises(UnrenderedFieldError, match="does not render its reasoning_content"):
        encode_conversation(_read_back(_record()), tok, chat_template=jinja, registry=REGISTRY)
    # kept in the content, the think block is what DeepSeek's template drops: only the answer
    enc = encode_conversation(_read_back(_record(split=False)), tok, chat_template=jinja,
                              registry=REGISTRY)
    assert trained_texts(tok, enc) == ["\n\nThe sum is 57.<｜end▁of▁sentence｜>"]
