"""The built-in chat templates (plugins/chat_templates.py) and how a template spec resolves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tempering.chat.encoding import IGNORE_INDEX, encode_conversation
from tempering.chat.templates import TemplateError, resolve_chat_template
from tempering.plugin_manager import build_plugin_manager, build_registry
from tests.conftest import REGISTRY, trained_texts

BUILTIN_MODULE = "tempering.plugins.chat_templates"


@pytest.fixture(scope="module")
def registry():
    return build_registry(build_plugin_manager())


def _builtin(registry, name: str, tok: Any) -> str:
    resolved = resolve_chat_template(name, tok, registry)
    assert resolved.name == name
    return resolved.jinja


def _vendor(shared_data: Path, name: str) -> str:
    return (shared_data / "chat_templates" / f"{name}.jinja").read_text(encoding="utf-8")


def _render(tok: Any, jinja: str, messages: list[dict[str, Any]], gen: bool) -> str:
    return tok.apply_chat_template(
        messages, chat_template=jinja, tokenize=False, add_generation_prompt=gen
    )


def _ids(tok: Any, jinja: str, messages: list[dict[str, Any]], gen: bool) -> list[int]:
    out = tok.apply_chat_template(
        messages, chat_template=jinja, tokenize=True, add_generation_prompt=gen
    )
    return list(out["input_ids"])


# -- conversations for the parity tests --------------------------------------------------------

_TURNS = [
    ("What is two plus two?", "Four."),
    ("  And with padding around it?  ", "  Padded answer, also around.\n"),
    ("A question\nover two lines?", "An answer:\n- first\n- second"),
    ("Last one?", "Done."),
]
SYSTEM = {"role": "system", "content": "You are a careful helper."}


def _conversation(turns: int, system: bool) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [dict(SYSTEM)] if system else []
    for user, assistant in _TURNS[:turns]:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return messages


# (built-in name, vendor file, system message?) pairs that must agree token for token.
PARITY = [
    ("llama3", "llama3", False),
    ("llama3", "llama3", True),
    ("qwen2.5", "qwen2_5", False),
    ("qwen2.5", "qwen2_5", True),
    ("chatml", "qwen2_5", True),
    ("gemma", "gemma", False),
    ("gemma", "gemma3", False),
    ("gemma", "gemma3", True),
    ("phi3", "phi3", False),
    ("phi3", "phi3", True),
]


@pytest.mark.parametrize("gen", [False, True], ids=["no_gen_prompt", "gen_prompt"])
@pytest.mark.parametrize("turns", [1, 2, 3, 4])
@pytest.mark.parametrize(
    ("builtin", "vendor", "system"),
    PARITY,
    ids=[f"{b}-vs-{v}-{'sys' if s else 'nosys'}" for b, v, s in PARITY],
)
def test_builtin_matches_vendor_template(
    builtin: str,
    vendor: str,
    system: bool,
    turns: int,
    gen: bool,
    registry,
    tiny_tokenizer,
    shared_data: Path,
) -> None:
    tok = tiny_tokenizer
    ours, theirs = _builtin(registry, builtin, tok), _vendor(shared_data, vendor)
    messages = _conversation(turns, system)
    if gen:
        messages = messages[:-1]  # ends with a user turn, as at inference
    rendered = _render(tok, ours, messages, gen)
    assert rendered == _render(tok, theirs, messages, gen)
    assert _ids(tok, ours, messages, gen) == _ids(tok, theirs, messages, gen)
    # Every content is in there (guards against two templates agreeing on dropping it).
    assert all(m["content"].strip() in rendered for m in messages)


def test_chatml_differs_from_qwen_without_system(registry, tiny_tokenizer) -> None:
    # Plain ChatML adds no default system message; Qwen 2.5 does.
    messages = _conversation(1, system=False)
    chatml = _render(tiny_tokenizer, _builtin(registry, "chatml", tiny_tokenizer), messages, False)
    qwen = _render(tiny_tokenizer, _builtin(registry, "qwen2.5", tiny_tokenizer), messages, False)
    assert chatml == (
        "<|im_start|>user\nWhat is two plus two?<|im_end|>\n"
        "<|im_start|>assistant\nFour.<|im_end|>\n"
    )
    assert qwen == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a "
        "helpful assistant.<|im_end|>\n" + chatml
    )


# -- documented formats: Mistral and Alpaca ---------------------------------------------------


@pytest.fixture()
def s_tokenizer(tiny_tokenizer):
    """The tiny tokenizer with Mistral/Llama-2 style ``<s>`` and ``</s>`` bos/eos."""
    tiny_tokenizer.add_special_tokens({"bos_token": "<s>", "eos_token": "</s>"})
    assert (tiny_tokenizer.bos_token, tiny_tokenizer.eos_token) == ("<s>", "</s>")
    return tiny_tokenizer


def test_mistral_format(registry, s_tokenizer) -> None:
    jinja = _builtin(registry, "mistral", s_tokenizer)
    messages = [
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "Four."},
        {"role": "user", "content": "And three plus three?"},
        {"role": "assistant", "content": "Six."},
    ]
    assert _render(s_tokenizer, jinja, messages, False) == (
        "<s>[INST] What is two plus two? [/INST] Four.</s>"
        "[INST] And three plus three? [/INST] Six.</s>"
    )
    assert _render(s_tokenizer, jinja, messages[:3], True) == (
        "<s>[INST] What is two plus two? [/INST] Four.</s>[INST] And three plus three? [/INST]"
    )


def test_mistral_prepends_system_to_first_user_turn_only(registry, s_tokenizer) -> None:
    jinja = _builtin(registry, "mistral", s_tokenizer)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye?"},
        {"role": "assistant", "content": "Goodbye."},
    ]
    assert _render(s_tokenizer, jinja, messages, False) == (
        "<s>[INST] Be brief.\n\nHi? [/INST] Hello.</s>[INST] Bye? [/INST] Goodbye.</s>"
    )


def test_mistral_rejects_other_roles(registry, s_tokenizer) -> None:
    messages = [
        {"role": "user", "content": "Hi?"},
        {"role": "tool", "content": "{}"},
        {"role": "assistant", "content": "Hello."},
    ]
    with pytest.raises(TemplateError, match="roles must be"):
        encode_conversation(messages, s_tokenizer, chat_template="mistral", registry=registry)


ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that "
    "appropriately completes the request."
)


def test_alpaca_format(registry, s_tokenizer) -> None:
    jinja = _builtin(registry, "alpaca", s_tokenizer)
    messages = [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ]
    assert _render(s_tokenizer, jinja, messages, False) == (
        ALPACA_PREAMBLE + "\n\n### Instruction:\nName a colour.\n\n### Response:Blue.</s>"
    )
    assert _render(s_tokenizer, jinja, messages[:1], True) == (
        ALPACA_PREAMBLE + "\n\n### Instruction:\nName a colour.\n\n### Response:"
    )


def test_alpaca_system_replaces_preamble_and_turns_repeat(registry, s_tokenizer) -> None:
    jinja = _builtin(registry, "alpaca", s_tokenizer)
    messages = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Sky colour?"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Grass colour?"},
        {"role": "assistant", "content": "Green."},
    ]
    assert _render(s_tokenizer, jinja, messages, False) == (
        "Answer in one word."
        "\n\n### Instruction:\nSky colour?\n\n### Response:Blue.</s>"
        "\n\n### Instruction:\nGrass colour?\n\n### Response:Green.</s>"
    )


def test_alpaca_on_a_real_alpaca_record(registry, s_tokenizer, shared_data: Path) -> None:
    from tests.conftest import to_messages

    records = json.loads((shared_data / "alpaca_5000.json").read_text(encoding="utf-8"))
    record = next(r for r in records if not r.get("input", "").strip())
    jinja = _builtin(registry, "alpaca", s_tokenizer)
    rendered = _render(s_tokenizer, jinja, to_messages(record, "alpaca"), False)
    assert rendered == (
        f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{record['instruction']}"
        f"\n\n### Response:{record['output']}</s>"
    )


# -- every built-in template encodes with the bundled tiny tokenizer -------------------------

END_OF_TURN = {
    "llama3": "<|eot_id|>",
    "chatml": "<|im_end|>",
    "qwen2.5": "<|im_end|>",
    "mistral": "eos",
    "gemma": "<end_of_turn>",
    "phi3": "<|end|>",
    "alpaca": "eos",
}


def test_every_builtin_template_is_covered(registry) -> None:
    builtins = {
        name
        for name, plugin in registry.providers["chat_template"].items()
        if plugin == BUILTIN_MODULE
    }
    assert builtins == set(END_OF_TURN)


@pytest.mark.parametrize("name", sorted(END_OF_TURN))
def test_builtin_declares_markers_the_tiny_tokenizer_knows(name, registry, tiny_tokenizer):
    template = registry.get("chat_template", name)
    rendered = _render(tiny_tokenizer, template.jinja, _conversation(1, system=True), False)
    for marker in template.special_tokens:
        assert marker in rendered
        assert marker in tiny_tokenizer.get_added_vocab()


@pytest.mark.parametrize("system", [False, True], ids=["nosys", "sys"])
@pytest.mark.parametrize("name", sorted(END_OF_TURN))
def test_builtin_template_encodes_multi_turn(
    name: str, system: bool, registry, tiny_tokenizer
) -> None:
    tok = tiny_tokenizer
    messages = _conversation(3, system)
    enc = encode_conversation(
        messages, tok, chat_template=name, masking="all_assistant", registry=registry
    )
    jinja = _builtin(registry, name, tok)
    assert enc.input_ids == _ids(tok, jinja, messages, False)

    eot = tok.eos_token if END_OF_TURN[name] == "eos" else END_OF_TURN[name]
    eot_id = tok.convert_tokens_to_ids(eot)
    assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    assert [index for index, _, _ in enc.spans] == assistants
    for index, start, end in enc.spans:
        covered = [
            t
            for t, (a, b) in enumerate(enc.offsets)
            if a < end and b > start and enc.labels[t] != IGNORE_INDEX
        ]
        assert covered, f"{name}: message {index} has no trained token"
        assert enc.input_ids[covered[-1]] == eot_id
        assert enc.text[start:end].endswith(eot)
    texts = trained_texts(tok, enc)
    assert len(texts) == len(assistants)
    for text, index in zip(texts, assistants, strict=True):
        assert messages[index]["content"].strip() in text
        assert text.endswith(eot)
        assert not any(m["content"].strip() in text for m in messages if m["role"] != "assistant")


# -- resolving a template spec ----------------------------------------------------------------

TWO_TURNS = [
    {"role": "user", "content": "Hi?"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Bye?"},
    {"role": "assistant", "content": "Goodbye."},
]


@pytest.mark.parametrize("spec", ["tokenizer", None])
def test_tokenizer_spec_uses_the_tokenizers_own_template(spec, registry, tiny_tokenizer) -> None:
    tok = tiny_tokenizer
    assert tok.chat_template
    resolved = resolve_chat_template(spec, tok, registry)
    assert (resolved.name, resolved.jinja) == ("tokenizer", tok.chat_template)
    enc = encode_conversation(TWO_TURNS, tok, chat_template=spec, registry=registry)
    assert enc.text == tok.apply_chat_template(TWO_TURNS, tokenize=False)
    assert enc.input_ids == list(tok.apply_chat_template(TWO_TURNS, tokenize=True)["input_ids"])
    assert trained_texts(tok, enc) == ["Hello.<|im_end|>", "Goodbye.<|im_end|>"]


def test_tokenizer_spec_without_a_template_is_an_error(registry, tiny_tokenizer) -> None:
    tiny_tokenizer.chat_template = None
    with pytest.raises(TemplateError, match="ships no chat template"):
        encode_conversation(TWO_TURNS, tiny_tokenizer, chat_template="tokenizer", registry=registry)


CUSTOM = (
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n{% endif %}"
)


def test_jinja_file_spec(tmp_path: Path, registry, tiny_tokenizer) -> None:
    path = tmp_path / "custom.jinja"
    path.write_text(CUSTOM, encoding="utf-8")
    resolved = resolve_chat_template(str(path), tiny_tokenizer, registry)
    assert (resolved.name, resolved.jinja) == (str(path), CUSTOM)
    enc = encode_conversation(TWO_TURNS, tiny_tokenizer, chat_template=str(path), registry=registry)
    assert enc.text == (
        "<|start_header_id|>user<|end_header_id|>\nHi?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\nHello.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\nBye?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\nGoodbye.<|eot_id|>"
    )
    assert enc.input_ids == _ids(tiny_tokenizer, CUSTOM, TWO_TURNS, False)
    assert trained_texts(tiny_tokenizer, enc) == ["Hello.<|eot_id|>", "Goodbye.<|eot_id|>"]


def test_inline_jinja_spec(registry, tiny_tokenizer) -> None:
    resolved = resolve_chat_template(CUSTOM, tiny_tokenizer, registry)
    assert (resolved.name, resolved.jinja) == ("inline", CUSTOM)


def test_missing_jinja_file_is_an_error(tmp_path: Path, registry, tiny_tokenizer) -> None:
    missing = tmp_path / "nope.jinja"
    with pytest.raises(TemplateError, match="does not exist"):
        encode_conversation(
            TWO_TURNS, tiny_tokenizer, chat_template=str(missing), registry=registry
        )


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [("lama3", "llama3"), ("qwen25", "qwen2.5"), ("gema", "gemma"), ("chat_ml", "chatml")],
)
def test_unknown_name_suggests_the_closest(typo, suggestion, registry, tiny_tokenizer) -> None:
    with pytest.raises(ValueError, match=f"unknown chat_template '{typo}'.*did you mean") as err:
        encode_conversation(TWO_TURNS, tiny_tokenizer, chat_template=typo, registry=registry)
    assert repr(suggestion) in str(err.value)


def test_unknown_unrelated_name_lists_the_valid_ones(registry, tiny_tokenizer) -> None:
    with pytest.raises(ValueError, match="valid names: ") as err:
        resolve_chat_template("zzzzzzzz", tiny_tokenizer, registry)
    for name in END_OF_TURN:
        assert name in str(err.value)


def test_a_template_whose_markers_the_tokenizer_lacks_is_refused(tiny_tokenizer):
    from tempering import ChatTemplate
    from tempering.chat.templates import TemplateError

    template = ChatTemplate("needs_markers", "{% for m in messages %}<|turn|>{{ m['content'] }}"
                            "{% endfor %}", special_tokens=("<|turn|>",))
    with pytest.raises(TemplateError, match=r"writes <\|turn\|> \(7 pieces\).*splits into pieces"):
        encode_conversation([{"role": "user", "content": "a"},
                             {"role": "assistant", "content": "b"}], tiny_tokenizer,
                            chat_template=template, registry=REGISTRY)
