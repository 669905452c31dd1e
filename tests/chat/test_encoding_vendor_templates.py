"""Mask exactness of the conversation encoder for every vendor chat template.

The references are the vendor templates in ``../shared/data/chat_templates`` rendered by
``tokenizer.apply_chat_template``; the tokenizer is the bundled tiny one with each template's
marker strings registered as special tokens (the ``make_tokenizer`` fixture), built once per
template.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tempering.chat.encoding import IGNORE_INDEX, Encoded, encode_conversation
from tempering.chat.templates import TemplateError
from tests.conftest import REGISTRY

TEMPLATE_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "chat_templates"
TEMPLATE_NAMES = sorted(p.stem for p in TEMPLATE_DIR.glob("*.jinja"))

MASKINGS = ("all_assistant", "last_assistant", "per_message", "all")


# -- conversations ----------------------------------------------------------------------------
# Every message's content is unique and distinctive, so each can be located in the rendered text
# exactly once and never occurs inside a template's markup or default system prompt.

SYSTEM = {"role": "system", "content": "You are Kestrel, a terse arithmetic helper."}


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


CONVERSATIONS: dict[str, list[dict[str, Any]]] = {
    "1turn": [
        _user("Quokka question: what is two plus two?"),
        _assistant("Quokka answer: four."),
    ],
    "sys_1turn_padded": [
        SYSTEM,
        _user("  Padded wombat question, spaces around it?  "),
        _assistant("  Padded wombat reply with spaces around it.  \n"),
    ],
    "2turn_multiline": [
        _user("Heron question one:\nlist two steps."),
        _assistant("Heron step one: add the units.\nHeron step two: carry.\n\nHeron done."),
        _user("Heron question two: and then?"),
        _assistant("Heron final reply: write the sum."),
    ],
    "sys_2turn": [
        SYSTEM,
        _user("Otter question one: three plus three?"),
        _assistant("Otter reply one: six."),
        _user("Otter question two: six plus one?"),
        _assistant("Otter reply two: seven."),
    ],
    "sys_3turn_mixed": [
        SYSTEM,
        _user("Lynx question one?"),
        _assistant("\n  Lynx reply one, padded.\n"),
        _user("Lynx question two,\nover two lines?"),
        _assistant("Lynx reply two:\n- bullet alpha\n- bullet beta"),
        _user("   Lynx question three, indented?"),
        _assistant("Lynx reply three.   "),
    ],
    "4turn": [
        _user("Badger question one?"),
        _assistant("Badger reply one."),
        _user("Badger question two?"),
        _assistant("  Badger reply two, padded.  "),
        _user("Badger question three?"),
        _assistant("Badger reply three:\nline a\nline b"),
        _user("Badger question four?"),
        _assistant("Badger reply four."),
    ],
    "sys_4turn": [
        SYSTEM,
        _user("Ibis question one?"),
        _assistant("Ibis reply one."),
        _user("Ibis question two?"),
        _assistant("Ibis reply two."),
        _user("Ibis question three?"),
        _assistant("Ibis reply three."),
        _user("Ibis question four?"),
        _assistant("Ibis reply four.\n"),
    ],
}


def _with_train_flags(conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mark every other assistant message (the 2nd, 4th, ...) ``train: False``."""
    out, seen = [], 0
    for message in conversation:
        message = dict(message)
        if message["role"] == "assistant":
            message["train"] = seen % 2 == 0
            seen += 1
        out.append(message)
    return out


def _conversation(name: str, masking: str) -> list[dict[str, Any]]:
    conversation = [dict(m) for m in CONVERSATIONS[name]]
    return _with_train_flags(conversation) if masking == "per_message" else conversation


def _expected_selection(conversation: list[dict[str, Any]], masking: str) -> list[int]:
    """Indices of the assistant messages ``masking`` trains, written out independently."""
    assistants = [i for i, m in enumerate(conversation) if m["role"] == "assistant"]
    if masking == "all_assistant":
        return assistants
    if masking == "last_assistant":
        return assistants[-1:]
    if masking == "per_message":
        return [i for i in assistants if conversation[i]["train"]]
    raise AssertionError(masking)


# -- helpers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def _tokenizer_cache() -> dict[str, Any]:
    return {}


@pytest.fixture()
def vendor(shared_data: Path, make_tokenizer, _tokenizer_cache):
    """``vendor(name) -> (jinja, tokenizer)``; the tokenizer is built once per template."""

    def get(name: str) -> tuple[str, Any]:
        if name not in _tokenizer_cache:
            jinja = (shared_data / "chat_templates" / f"{name}.jinja").read_text(encoding="utf-8")
            _tokenizer_cache[name] = (jinja, make_tokenizer(jinja))
        return _tokenizer_cache[name]

    return get


def _reference_render(tok: Any, jinja: str, conversation: list[dict[str, Any]]) -> str | None:
    """The vendor rendering, or None when the template cannot render the conversation."""
    try:
        return tok.apply_chat_template(conversation, chat_template=jinja, tokenize=False)
    except Exception:  # jinja errors and raise_exception() from the template
        return None


def _renders_text_only(text: str | None, conversation: list[dict[str, Any]]) -> bool:
    return text is not None and all(m["content"].strip() in text for m in conversation)


def _trained_runs(enc: Encoded) -> list[tuple[int, int]]:
    """Contiguous runs of trained tokens as ``(first_token, last_token + 1)``."""
    runs: list[tuple[int, int]] = []
    for t, label in enumerate(enc.labels):
        if label == IGNORE_INDEX:
            continue
        if runs and runs[-1][1] == t:
            runs[-1] = (runs[-1][0], t + 1)
        else:
            runs.append((t, t + 1))
    return runs


def _run_text(tok: Any, enc: Encoded, run: tuple[int, int]) -> str:
    """The decoded text of a run of tokens (checked against the rendered characters)."""
    first, stop = run
    decoded = tok.decode(
        enc.input_ids[first:stop], skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    assert decoded == enc.text[enc.offsets[first][0] : enc.offsets[stop - 1][1]]
    return decoded


def _trained_texts(tok: Any, enc: Encoded) -> list[str]:
    return [_run_text(tok, enc, run) for run in _trained_runs(enc)]


def _longest_header_prefix(before_start: str, header: str) -> int:
    """Length of the longest non-empty prefix of ``header`` that ``before_start`` ends with."""
    for k in range(len(header), 0, -1):
        if before_start.endswith(header[:k]):
            return k
    return 0


# -- the parametrized exactness test ---------------------------------------------------------


@pytest.mark.parametrize("masking", MASKINGS)
@pytest.mark.parametrize("conversation_name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("template_name", TEMPLATE_NAMES)
def test_vendor_template_masks_are_exact(
    template_name: str, conversation_name: str, masking: str, vendor, request
) -> None:
    jinja, tok = vendor(template_name)
    conversation = _conversation(conversation_name, masking)
    reference = _reference_render(tok, jinja, conversation)

    if not _renders_text_only(reference, conversation):
        with pytest.raises(TemplateError):
            encode_conversation(conversation, tok, chat_template=jinja, masking=masking, registry=REGISTRY)
        return

    enc = encode_conversation(conversation, tok, chat_template=jinja, masking=masking, registry=REGISTRY)
    reference_ids = tok.apply_chat_template(conversation, chat_template=jinja, tokenize=True)
    assert enc.text == reference
    assert enc.input_ids == list(reference_ids["input_ids"])
    assert len(enc.labels) == len(enc.input_ids)

    if masking == "all":
        assert enc.labels == enc.input_ids
        return

    _check_spans(tok, jinja, conversation, enc, _expected_selection(conversation, masking))


def _check_spans(
    tok: Any, jinja: str, conversation: list[dict[str, Any]], enc: Encoded, selected: list[int]
) -> None:
    text = enc.text
    assert [index for index, _, _ in enc.spans] == selected
    trained = [i for i, label in enumerate(enc.labels) if label != IGNORE_INDEX]
    assert all(enc.labels[i] == enc.input_ids[i] for i in trained)

    # One contiguous run of trained tokens per span, overlapping it.
    runs = _trained_runs(enc)
    assert len(runs) == len(enc.spans)
    prompt_contents = [m["content"].strip() for m in conversation if m["role"] != "assistant"]
    for (index, start, end), run in zip(enc.spans, runs, strict=True):
        run_start, run_end = enc.offsets[run[0]][0], enc.offsets[run[1] - 1][1]
        assert run_start < end and run_end > start, f"run does not cover message {index}"
        run_text = _run_text(tok, enc, run)

        # The content is trained, prompts are not.
        assert conversation[index]["content"].strip() in run_text
        for prompt in prompt_contents:
            assert prompt not in run_text

        # The span ends with the end-of-turn token, or runs to the end of the text (GLM's
        # final turn, after which the template writes nothing).
        if text[end:].strip():
            assert any(text[start:end].endswith(token) for token in tok.get_added_vocab())
            assert any(run_text.endswith(token) for token in tok.get_added_vocab())
        else:
            assert end == len(text.rstrip())

        # The span starts after the generation prompt, never inside earlier turns or the role
        # header: what precedes it ends with (at least the start of) the generation prompt.
        prompt = tok.apply_chat_template(
            conversation[:index], chat_template=jinja, tokenize=False, add_generation_prompt=True
        )
        before = tok.apply_chat_template(
            conversation[:index], chat_template=jinja, tokenize=False, add_generation_prompt=False
        )
        # What the generation prompt adds to the earlier turns (Phi-3 also drops its closing
        # eos_token when a generation prompt follows, so compare with a common prefix).
        shared = os.path.commonprefix([prompt, before])
        header = prompt[len(shared) :]
        if text.startswith(shared):
            assert start >= len(shared)
        if text.startswith(prompt):
            # The whole generation prompt is in the text: the span starts right after it.
            assert start == len(prompt)
        if header:
            matched = _longest_header_prefix(text[:start], header)
            assert matched > 0
            # ... and as much of it as the text renders is excluded (a partial match, such as
            # a pre-filled '<think>' that the turn renders differently, stops where they part).
            assert matched == len(header) or not text.startswith(header[matched], start)
        span_text = text[start:end]
        for role_line in ("assistant\n", "model\n", "Assistant:", "<|assistant|>"):
            assert not span_text.startswith(role_line)

    # Assistant turns that are not selected have no trained token.
    trained_chars = [enc.offsets[i] for i in trained]
    for index, message in enumerate(conversation):
        if message["role"] != "assistant" or index in selected:
            continue
        content = message["content"].strip()
        assert text.count(content) == 1
        at = text.index(content)
        assert not any(a < at + len(content) and b > at for a, b in trained_chars), (
            f"unselected message {index} has trained tokens"
        )


# -- which templates render text-only conversations ------------------------------------------


def test_template_directory_is_populated(shared_data: Path) -> None:
    # The parametrized tests above run over TEMPLATE_NAMES: they must not quietly collect none.
    assert len(TEMPLATE_NAMES) >= 20, TEMPLATE_NAMES
    names = set(TEMPLATE_NAMES)
    assert {
        "llama3",
        "qwen2_5",
        "gemma",
        "gemma3",
        "phi3",
        "gptoss",
        "qwen3",
        "deepseekv3",
        "idefics3",
        "llava_next",
        "glm4moe",
    } <= names


def test_non_rendering_templates_are_the_multimodal_ones_and_gemma_with_system(vendor) -> None:
    failing = set()
    for name in TEMPLATE_NAMES:
        jinja, tok = vendor(name)
        for conversation_name, conversation in CONVERSATIONS.items():
            if not _renders_text_only(_reference_render(tok, jinja, conversation), conversation):
                failing.add((name, conversation_name))
    with_system = {n for n, c in CONVERSATIONS.items() if c[0]["role"] == "system"}
    assert {("llava_next", c) for c in CONVERSATIONS} <= failing
    assert {("idefics3", c) for c in CONVERSATIONS} <= failing
    assert {("gemma", c) for c in with_system} <= failing
    # ... and the text formats all render every conversation.
    for name in (
        "llama3",
        "qwen2_5",
        "gemma3",
        "phi3",
        "gptoss",
        "qwen3",
        "deepseekv3",
        "glm4moe",
        "cohere",
    ):
        assert not any(n == name for n, _ in failing), name
    assert not any(n == "gemma" and c not in with_system for n, c in failing)


# -- hand-written expectations from the vendor formats ---------------------------------------

TWO_TURNS = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "Four."},
    {"role": "user", "content": "And three plus three?"},
    {"role": "assistant", "content": "Six."},
]

# Read off each template: what the model writes after the generation prompt, up to and
# including the token at which generation stops.
EXPECTED_TRAINED = {
    # '<|start_header_id|>assistant<|end_header_id|>\n\n' + content|trim + '<|eot_id|>'
    "llama3": ["Four.<|eot_id|>", "Six.<|eot_id|>"],
    # '<|im_start|>assistant\n' + content + '<|im_end|>' + '\n' (the newline is not generated)
    "qwen2_5": ["Four.<|im_end|>", "Six.<|im_end|>"],
    # '<start_of_turn>model\n' + content|trim + '<end_of_turn>\n'
    "gemma3": ["Four.<end_of_turn>", "Six.<end_of_turn>"],
    # '<|assistant|>\n' + content + '<|end|>\n'; eos_token after the last turn
    "phi3": ["Four.<|end|>", "Six.<|end|>"],
    # generation prompt '<|start|>assistant'; earlier turns end '<|end|>', the final '<|return|>'
    "gptoss": [
        "<|channel|>final<|message|>Four.<|end|>",
        "<|channel|>final<|message|>Six.<|return|>",
    ],
    # turns after the last user query get an empty think block; earlier ones do not
    "qwen3": ["Four.<|im_end|>", "<think>\n\n</think>\n\nSix.<|im_end|>"],
    # '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' (the prompt's '<think>\n' is not rendered)
    "deepseekv3": ["Four.<｜end▁of▁sentence｜>", "Six.<｜end▁of▁sentence｜>"],
}


@pytest.mark.parametrize("template_name", sorted(EXPECTED_TRAINED))
def test_trained_text_matches_vendor_format(template_name: str, vendor) -> None:
    jinja, tok = vendor(template_name)
    enc = encode_conversation(TWO_TURNS, tok, chat_template=jinja, masking="all_assistant", registry=REGISTRY)
    assert _trained_texts(tok, enc) == EXPECTED_TRAINED[template_name]
    assert [enc.text[s:e] for _, s, e in enc.spans] == EXPECTED_TRAINED[template_name]


@pytest.mark.parametrize("template_name", ["llama3", "gemma3", "gemma"])
def test_trimming_templates_train_the_trimmed_content(template_name: str, vendor) -> None:
    jinja, tok = vendor(template_name)
    end = {"llama3": "<|eot_id|>", "gemma3": "<end_of_turn>", "gemma": "<end_of_turn>"}
    conversation = [
        {"role": "user", "content": "Hi there?"},
        {"role": "assistant", "content": "  \n Four.\n\n  "},
        {"role": "user", "content": "More?"},
        {"role": "assistant", "content": "\tSix. "},
    ]
    enc = encode_conversation(conversation, tok, chat_template=jinja, registry=REGISTRY)
    assert _trained_texts(tok, enc) == ["Four." + end[template_name], "Six." + end[template_name]]


def test_last_assistant_trains_only_the_final_turn(vendor) -> None:
    jinja, tok = vendor("llama3")
    enc = encode_conversation(TWO_TURNS, tok, chat_template=jinja, masking="last_assistant", registry=REGISTRY)
    assert _trained_texts(tok, enc) == ["Six.<|eot_id|>"]


def test_per_message_train_flags(vendor) -> None:
    jinja, tok = vendor("qwen2_5")
    conversation = [dict(m) for m in TWO_TURNS]
    conversation[2]["train"] = False
    enc = encode_conversation(conversation, tok, chat_template=jinja, masking="per_message", registry=REGISTRY)
    assert _trained_texts(tok, enc) == ["Six.<|im_end|>"]
    conversation[2]["train"] = True
    conversation[4]["train"] = False
    enc = encode_conversation(conversation, tok, chat_template=jinja, masking="per_message", registry=REGISTRY)
    assert _trained_texts(tok, enc) == ["Four.<|im_end|>"]


def test_glm_final_turn_has_no_end_of_turn_token(vendor) -> None:
    # GLM-4 writes no end-of-turn marker: a turn ends at the next '<|user|>', and the final
    # turn ends with the text.
    jinja, tok = vendor("glm4moe")
    enc = encode_conversation(TWO_TURNS, tok, chat_template=jinja, registry=REGISTRY)
    assert _trained_texts(tok, enc) == [
        "\n<think></think>\nFour.<|user|>",
        "\n<think></think>\nSix.",
    ]
    assert enc.spans[-1][2] == len(enc.text)
