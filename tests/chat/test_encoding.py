"""Exact masks on the awkward cases a review found (issue 5, items 4-7 and GLM's turn ends).

Every expectation is written out by hand from the rendered text: what the model generates after
the generation prompt, through the token at which it stops.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tempering.chat.encoding import IGNORE_INDEX, UnrenderedFieldError, encode_conversation
from tests.conftest import REGISTRY, TINY, template_markers, to_messages, trained_texts

TEMPLATES = Path(__file__).resolve().parents[3] / "shared" / "data" / "chat_templates"


def _vendor(shared_data: Path, name: str, *, non_special: tuple[str, ...] = ()) -> tuple[str, Any]:
    """A vendor template and the tiny tokenizer with its markers added; ``non_special`` markers
    are added as plain (non-special) added tokens, as Qwen's tokenizer has ``<tool_call>``."""
    from transformers import AutoTokenizer

    jinja = (shared_data / "chat_templates" / f"{name}.jinja").read_text(encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(TINY)
    markers = [m for m in template_markers(jinja) if m not in tok.get_vocab()]
    tok.add_special_tokens({"additional_special_tokens": [m for m in markers
                                                          if m not in non_special]})
    if non_special:
        tok.add_tokens(list(non_special))
    return jinja, tok


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _assistant(text: str, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": text, **extra}


# -- item 4: whitespace-only tokens under an offset-trimming tokenizer ------------------------


@pytest.fixture()
def trimming_tokenizer():
    """The tiny tokenizer with a ByteLevel post-processor that trims offsets (GPT-2 style)."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TINY)
    tok.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    return tok


@pytest.mark.parametrize("answer", [
    "one\n\ntwo  three\nfour",
    "def f(x):\n    if x:\n        return  1\n    return 0",
    "a   b\t\t c    ",
])
def test_runs_of_spaces_are_trained_under_an_offset_trimming_tokenizer(trimming_tokenizer,
                                                                       answer: str) -> None:
    tok = trimming_tokenizer
    trimmed = tok(answer, add_special_tokens=False, return_offsets_mapping=True)
    assert any(a == b for a, b in trimmed["offset_mapping"]), "the tokenizer must trim offsets"
    messages = [_user("Write it."), _assistant(answer)]
    enc = encode_conversation(messages, tok, chat_template="chatml", registry=REGISTRY)
    reference = tok.apply_chat_template(messages, chat_template=enc_template(), tokenize=True)
    assert enc.input_ids == list(reference["input_ids"])
    assert trained_texts(tok, enc) == [answer + "<|im_end|>"]
    # every token of the answer is trained: the trained ids are exactly the answer's tokens
    answer_ids = tok(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
    assert [label for label in enc.labels if label != IGNORE_INDEX] == answer_ids


def enc_template() -> str:
    from tempering.plugins.chat_templates import CHATML

    return CHATML


# -- item 5: answers that start like the pre-filled generation prompt -------------------------

# Templates whose generation prompt pre-fills "<think>\n" (or all of an empty think block).
PREFILLING = ("deepseekv3", "qwen3_5_think", "qwen3_5_nothink", "qwen3_6", "nemotron_3_nano",
              "nemotron_3_super")


@pytest.mark.parametrize("answer", ["<b>hi</b>", "<think>x", "<think>\nplan\n</think>\n\ndone"])
@pytest.mark.parametrize("name", PREFILLING)
def test_an_answer_that_starts_with_markup_is_trained_in_full(shared_data, name: str,
                                                               answer: str) -> None:
    jinja, tok = _vendor(shared_data, name)
    messages = [_user("Q?"), _assistant(answer)]
    enc = encode_conversation(messages, tok, chat_template=jinja, registry=REGISTRY)
    assert enc.input_ids == list(tok.apply_chat_template(messages, chat_template=jinja,
                                                         tokenize=True)["input_ids"])
    (index, start, end), = enc.spans
    rendered = enc.text[start:end]
    # whatever of the answer the template renders (DeepSeek drops a leading think block) is
    # inside the span, from its first character
    shown = answer if answer in enc.text else answer.split("</think>")[-1]
    assert shown in rendered
    at = enc.text.rindex(shown)
    assert start <= at and end >= at + len(shown)
    assert trained_texts(tok, enc)[0].endswith(shown + _end_of(name))


def _end_of(name: str) -> str:
    return "<｜end▁of▁sentence｜>" if name == "deepseekv3" else "<|im_end|>"


def test_the_think_prefix_of_an_answer_is_not_eaten_by_the_generation_prompt(shared_data) -> None:
    # Nemotron's prompt pre-fills "<think>\n"; the answer "<think>x" renders "<think>x": the
    # partial match of the prompt ("<think>") ran into the content and left "x" alone trained.
    jinja, tok = _vendor(shared_data, "nemotron_3_nano")
    enc = encode_conversation([_user("Q?"), _assistant("<think>x")], tok, chat_template=jinja, registry=REGISTRY)
    assert trained_texts(tok, enc) == ["<think>x<|im_end|>"]
    enc = encode_conversation([_user("Q?"), _assistant("<b>hi</b>")], tok, chat_template=jinja, registry=REGISTRY)
    assert trained_texts(tok, enc) == ["</think><b>hi</b><|im_end|>"]


# -- item 6: tool calls --------------------------------------------------------------------

CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
TOOL_CONVERSATION = [
    _user("Weather in Oslo?"),
    _assistant("Let me check.", tool_calls=[CALL]),
    {"role": "tool", "content": "{\"temp\": 3}"},
    _assistant("It is 3 degrees."),
]


def test_a_tool_call_is_trained_through_the_real_end_of_turn(shared_data) -> None:
    jinja, tok = _vendor(shared_data, "qwen2_5", non_special=("<tool_call>", "</tool_call>",
                                                              "<tool_response>",
                                                              "</tool_response>"))
    assert not tok.added_tokens_decoder[tok.convert_tokens_to_ids("<tool_call>")].special
    enc = encode_conversation(TOOL_CONVERSATION, tok, chat_template=jinja, registry=REGISTRY)
    assert enc.input_ids == list(tok.apply_chat_template(
        TOOL_CONVERSATION, chat_template=jinja, tokenize=True)["input_ids"])
    call = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}'
            "\n</tool_call><|im_end|>")
    assert trained_texts(tok, enc) == [call, "It is 3 degrees.<|im_end|>"]
    assert enc.stop_ids == [tok.convert_tokens_to_ids("<|im_end|>")] * 2


def test_a_tool_call_without_content_is_trained(shared_data) -> None:
    jinja, tok = _vendor(shared_data, "qwen2_5", non_special=("<tool_call>", "</tool_call>"))
    messages = [_user("Weather?"), _assistant("", tool_calls=[CALL])]
    enc = encode_conversation(messages, tok, chat_template=jinja, registry=REGISTRY)
    assert trained_texts(tok, enc) == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
        "<|im_end|>"]


def test_a_template_that_drops_tool_calls_refuses_the_record(tiny_tokenizer) -> None:
    with pytest.raises(UnrenderedFieldError, match="get_weather") as err:
        encode_conversation(TOOL_CONVERSATION, tiny_tokenizer, chat_template="chatml", registry=REGISTRY)
    assert err.value.kind == "tool_calls_not_rendered"


def test_reasoning_the_template_drops_from_a_trained_turn_is_refused(shared_data) -> None:
    # Qwen3 drops the reasoning of turns before the last user message: training such a turn
    # would teach it to answer without its reasoning.
    jinja, tok = _vendor(shared_data, "qwen3")
    messages = [_user("One?"), _assistant("1", reasoning_content="count once"), _user("Two?"),
                _assistant("2", reasoning_content="count twice")]
    with pytest.raises(UnrenderedFieldError, match="reasoning_content") as err:
        encode_conversation(messages, tok, chat_template=jinja, registry=REGISTRY)
    assert err.value.kind == "reasoning_not_rendered"
    enc = encode_conversation(messages, tok, chat_template=jinja, masking="last_assistant", registry=REGISTRY)
    assert trained_texts(tok, enc) == ["<think>\ncount twice\n</think>\n\n2<|im_end|>"]


def test_qwen3_final_tool_call_turn_with_reasoning_is_trained_in_full(shared_data) -> None:
    # The final turn keeps its think block only while no user turn follows it: the end of
    # the turn must be found without a placeholder user turn changing how it renders.
    jinja, tok = _vendor(shared_data, "qwen3", non_special=("<tool_call>", "</tool_call>",
                                                            "<think>", "</think>"))
    messages = [_user("Weather in Oslo?"),
                _assistant("Let me check.", tool_calls=[CALL], reasoning_content="use the tool")]
    enc = encode_conversation(messages, tok, chat_template=jinja, registry=REGISTRY)
    assert enc.input_ids == list(tok.apply_chat_template(messages, chat_template=jinja,
                                                         tokenize=True)["input_ids"])
    assert trained_texts(tok, enc) == [
        '<think>\nuse the tool\n</think>\n\nLet me check.\n<tool_call>\n{"name": "get_weather", '
        '"arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>']


def test_readers_keep_tool_calls_and_reasoning() -> None:
    record = {"messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL],
         "reasoning_content": "I should call the tool."},
        {"role": "tool", "content": "3", "tool_call_id": "call_1", "name": "get_weather"},
        {"role": "assistant", "content": "3 degrees."},
    ]}
    messages = to_messages(record, "messages")
    assert messages[1] == {"role": "assistant", "content": "", "tool_calls": [CALL],
                           "reasoning_content": "I should call the tool."}
    assert messages[2] == {"role": "tool", "content": "3", "tool_call_id": "call_1",
                           "name": "get_weather"}


@pytest.mark.parametrize(("message", "field"), [
    ({"role": "assistant", "content": "", "tool_calls": [{"function": {}}]},
     "messages[1].tool_calls[0]"),
    ({"role": "assistant", "content": "x", "tool_calls": "get_weather()"}, "messages[1].tool_calls"),
    ({"role": "assistant", "content": "x", "reasoning_content": 3}, "messages[1].reasoning_content"),
    ({"role": "assistant", "content": None}, "messages[1].content"),
])
def test_bad_tool_call_and_reasoning_fields_name_their_path(message, field) -> None:
    from tempering.data.records import BadRecordError

    with pytest.raises(BadRecordError) as err:
        to_messages({"messages": [_user("Q?"), message]}, "messages")
    assert err.value.field == field


def test_tool_calls_survive_tokenization_with_differently_shaped_arguments(shared_data,
                                                                           tmp_path) -> None:
    from tempering.chat.encoding import ConversationEncoder
    from tempering.data.sources import BadRecordLog, Conversation
    from tempering.data.tokenization import tokenize_conversations

    jinja, tok = _vendor(shared_data, "qwen2_5", non_special=("<tool_call>", "</tool_call>"))
    other = {"type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": [2]}}}
    conversations = [
        Conversation([_user("Oslo?"), _assistant("", tool_calls=[CALL])], "a:1"),
        Conversation([_user("Sum?"), _assistant("", tool_calls=[other])], "a:2"),
    ]
    encoder = ConversationEncoder(tok, chat_template=jinja, registry=REGISTRY)
    data = tokenize_conversations(conversations, encoder, max_length=512, overflow=REGISTRY.get("overflow_policy", "drop"),
                                  on_bad_record="error", log=BadRecordLog(),
                                  cache_dir=str(tmp_path))
    texts = [tok.decode(ids) for ids in data["input_ids"]]
    # arguments are rendered as they were, not merged into one schema padded with nulls
    assert '{"city": "Oslo"}' in texts[0] and "null" not in texts[0]
    assert '{"a": 1, "b": [2]}' in texts[1] and "null" not in texts[1]


def test_unrendered_tool_calls_are_counted_when_skipping(tiny_tokenizer, tmp_path) -> None:
    from tempering.chat.encoding import ConversationEncoder
    from tempering.data.sources import BadRecordLog, Conversation
    from tempering.data.tokenization import tokenize_conversations

    log = BadRecordLog()
    conversations = [Conversation(TOOL_CONVERSATION, "f:1"),
                     Conversation([_user("Hi"), _assistant("Hello")], "f:2")]
    data = tokenize_conversations(conversations, ConversationEncoder(tiny_tokenizer,
                                                                     chat_template="chatml", registry=REGISTRY),
                                  max_length=512, overflow=REGISTRY.get("overflow_policy", "drop"), on_bad_record="skip", log=log,
                                  cache_dir=str(tmp_path))
    assert len(data) == 1 and dict(log.counts) == {"tool_calls_not_rendered": 1}


# -- item 7 and GLM's turn ends ---------------------------------------------------------------

TWO_TURNS = [_user("Two plus two?"), _assistant("Four."), _user("And three?"),
             _assistant("Six.")]


def test_glm_final_turn_is_reported_and_can_be_given_a_stop_token(shared_data) -> None:
    jinja, tok = _vendor(shared_data, "glm4moe")
    plain = encode_conversation(TWO_TURNS, tok, chat_template=jinja, registry=REGISTRY)
    assert plain.unterminated == [3]
    assert plain.stop_ids == [tok.convert_tokens_to_ids("<|user|>")]
    stopped = encode_conversation(TWO_TURNS, tok, chat_template=jinja, append_stop_token="eos", registry=REGISTRY)
    assert stopped.input_ids == plain.input_ids + [tok.eos_token_id]
    assert trained_texts(tok, stopped)[-1] == "\n<think></think>\nSix." + tok.eos_token
    assert stopped.unterminated == [] and stopped.stop_ids[-1] == tok.eos_token_id
    as_user = encode_conversation(TWO_TURNS, tok, chat_template=jinja,
                                  append_stop_token="<|user|>", registry=REGISTRY)
    assert trained_texts(tok, as_user)[-1].endswith("Six.<|user|>")


def test_append_stop_token_leaves_closed_turns_alone(tiny_tokenizer) -> None:
    plain = encode_conversation(TWO_TURNS, tiny_tokenizer, chat_template="chatml", registry=REGISTRY)
    stopped = encode_conversation(TWO_TURNS, tiny_tokenizer, chat_template="chatml",
                                  append_stop_token="eos", registry=REGISTRY)
    assert stopped.input_ids == plain.input_ids and stopped.labels == plain.labels


def test_an_unknown_stop_token_is_an_error(tiny_tokenizer) -> None:
    from tempering.chat.templates import TemplateError

    with pytest.raises(TemplateError, match="append_stop_token"):
        encode_conversation(TWO_TURNS, tiny_tokenizer, chat_template="chatml",
                            append_stop_token="<|no_such_token|>", registry=REGISTRY)


def test_glm_consecutive_assistant_turns_do_not_train_the_next_header(shared_data) -> None:
    jinja, tok = _vendor(shared_data, "glm4moe")
    messages = [_user("Hi?"), _assistant("First part."), _assistant("Second part."),
                _user("Ok?"), _assistant("Yes.")]
    enc = encode_conversation(messages, tok, chat_template=jinja, registry=REGISTRY)
    texts = trained_texts(tok, enc)
    assert not any("<|assistant|>" in t for t in texts)
    assert texts[0].endswith("First part.") and texts[-2].endswith("Second part.<|user|>")
    assert enc.unterminated == [1, 4]


def test_check_template_says_when_a_final_turn_has_no_stop_token(shared_data, capsys,
                                                                 tmp_path) -> None:
    from tempering.cli import main

    jinja, tok = _vendor(shared_data, "glm4moe")
    tok.save_pretrained(tmp_path / "tok")
    (tmp_path / "glm.jinja").write_text(jinja, encoding="utf-8")
    main(["check-template", "--tokenizer", str(tmp_path / "tok"), "--chat-template",
          str(tmp_path / "glm.jinja")])
    out = capsys.readouterr().out
    assert "no end-of-turn token" in out and "append_stop_token" in out


def test_stop_tokens_and_unterminated_turns_are_in_the_data_stats(tiny_recipe) -> None:
    from tempering.data.datamodule import ConversationDataModule
    from tempering.models import load_fast_tokenizer as load_tokenizer
    from tempering.plugin_manager import build_plugin_manager, build_registry
    from tempering.recipe import load_recipe

    recipe = load_recipe(tiny_recipe)
    pm = build_plugin_manager()
    dm = ConversationDataModule(recipe, load_tokenizer(recipe.model), pm, build_registry(pm))
    dm.setup("fit")
    stats = dm.stats()
    assert list(stats["end_of_turn_tokens"]) == ["<|im_end|>"]
    assert stats["end_of_turn_tokens"]["<|im_end|>"] >= stats["train_conversations"]
    assert stats["turns_without_end_of_turn"] == 0
    assert json.dumps(stats)  # plain data for the summary and W&B


def test_without_trained_end_of_turn_tokens_no_stop_token_is_reported(tiny_tokenizer) -> None:
    enc = encode_conversation(TWO_TURNS, tiny_tokenizer, chat_template="chatml",
                              train_on_eot=False, registry=REGISTRY)
    assert enc.stop_ids == [] and enc.unterminated == [1, 3]


def test_held_out_generation_stops_at_the_trained_end_of_turn(tiny_tokenizer) -> None:
    from types import SimpleNamespace

    from tempering.chat.encoding import ConversationEncoder
    from tempering.generate.hf import stop_token_ids

    encoder = ConversationEncoder(tiny_tokenizer, chat_template="llama3", registry=REGISTRY)
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=None))
    stops = stop_token_ids(tiny_tokenizer, model, encoder, TWO_TURNS)
    assert stops == sorted({tiny_tokenizer.convert_tokens_to_ids("<|eot_id|>"),
                            tiny_tokenizer.eos_token_id})
