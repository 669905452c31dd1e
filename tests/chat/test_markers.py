"""Markers a template writes that the tokenizer splits are found and said (issue 6, item 11)."""

from __future__ import annotations

import json

import pytest

from tempering.chat.encoding import ConversationEncoder, encode_conversation
from tempering.chat.templates import TemplateError
from tempering.cli import main
from tests.conftest import REGISTRY, SHARED, TINY, template_markers, trained_texts

CONVERSATION = [{"role": "user", "content": "hi there"},
                {"role": "assistant", "content": "hello friend"}]
# A Zephyr-style template: its role markers are plain text for its tokenizer, by design.
TEXT_MARKERS = ("{% for m in messages %}<|role_{{ m['role'] }}|>\n{{ m['content'] }}"
                "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|role_assistant|>\n"
                "{% endif %}")


def vendor(name: str) -> str:
    path = SHARED / "chat_templates" / f"{name}.jinja"
    if not path.is_file():
        pytest.skip(f"reference template {path} not found")
    return str(path)


def pieces(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def test_deepseek_markers_are_refused_even_without_training_the_end_of_turn(tiny_tokenizer):
    assert pieces(tiny_tokenizer, "<｜Assistant｜>") > 1  # the tiny tokenizer lacks them
    with pytest.raises(TemplateError) as err:
        encode_conversation(CONVERSATION, tiny_tokenizer, chat_template=vendor("deepseekv3"),
                            train_on_eot=False, registry=REGISTRY)
    message = str(err.value)
    assert f"<｜Assistant｜> ({pieces(tiny_tokenizer, '<｜Assistant｜>')} pieces)" in message
    assert "<｜User｜>" in message and "<｜end▁of▁sentence｜>" in message
    assert "allow_split_markers: true" in message


def test_glm_markers_outside_any_turn_are_found(tiny_tokenizer):
    encoder = ConversationEncoder(tiny_tokenizer, chat_template=vendor("glm4moe"),
                                  allow_split_markers=True, registry=REGISTRY)
    split = {m.marker: m.pieces for m in encoder.split_markers}
    assert split["[gMASK]"] == pieces(tiny_tokenizer, "[gMASK]") > 1
    assert split["<sop>"] == pieces(tiny_tokenizer, "<sop>") > 1
    assert "<|user|>" not in split and "<|assistant|>" not in split  # tokens of the tiny vocab
    enc = encoder.encode(CONVERSATION)  # allowed: trained as text
    assert trained_texts(tiny_tokenizer, enc)[-1].endswith("hello friend")


def test_no_vendor_template_is_refused_with_a_tokenizer_that_has_its_markers(make_tokenizer):
    names = sorted(p.stem for p in (SHARED / "chat_templates").glob("*.jinja"))
    if not names:
        pytest.skip("no reference templates")
    for name in names:
        jinja = (SHARED / "chat_templates" / f"{name}.jinja").read_text()
        tok = make_tokenizer(jinja)
        encoder = ConversationEncoder(tok, chat_template=vendor(name), train_on_eot=False, registry=REGISTRY)
        assert encoder.split_markers == [], name
    assert "[gMASK]" in template_markers((SHARED / "chat_templates" / "glm4moe.jinja").read_text())


def test_a_template_that_refuses_system_messages_is_still_probed(tiny_tokenizer):
    jinja = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}"
             "{% endif %}<|turn_{{ m['role'] }}|>{{ m['content'] }}<|end_of_text|>{% endfor %}")
    encoder = ConversationEncoder(tiny_tokenizer, chat_template=jinja, allow_split_markers=True, registry=REGISTRY)
    assert {m.marker for m in encoder.split_markers} == {"<|turn_user|>", "<|turn_assistant|>"}


def test_the_tokenizers_own_text_markers_are_a_note_not_a_refusal(tiny_tokenizer, tmp_path,
                                                                   capsys):
    tiny_tokenizer.chat_template = TEXT_MARKERS
    encoder = ConversationEncoder(tiny_tokenizer, registry=REGISTRY)  # chat_template: tokenizer
    assert {m.marker for m in encoder.split_markers} == {
        "<|role_system|>", "<|role_user|>", "<|role_assistant|>"}
    assert trained_texts(tiny_tokenizer, encoder.encode(CONVERSATION)) == [
        "hello friend" + tiny_tokenizer.eos_token]
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    assert main(["check-template", "--tokenizer", str(tmp_path / "tok")]) == 0
    out = capsys.readouterr().out
    assert "note: template 'tokenizer' writes <|role_system|> (" in out and "FAILED" not in out
    with pytest.raises(TemplateError, match="<|role_user|>"):  # the same text from a file
        ConversationEncoder(tiny_tokenizer, chat_template=TEXT_MARKERS, registry=REGISTRY)


def test_check_template_fails_on_split_markers_and_takes_its_own_advice(capsys):
    glm = vendor("glm4moe")
    assert main(["check-template", "--tokenizer", "bundled:tiny-llama", "--chat-template", glm]) == 1
    out = capsys.readouterr().out
    assert "[gMASK] (" in out and "<sop> (" in out and "FAILED" in out.splitlines()[-1]
    assert main(["check-template", "--tokenizer", "bundled:tiny-llama", "--chat-template", glm,
                 "--allow-split-markers"]) == 0
    capsys.readouterr()
    deepseek = vendor("deepseekv3")
    assert main(["check-template", "--tokenizer", "bundled:tiny-llama", "--chat-template",
                 deepseek, "--allow-split-markers"]) == 1
    assert "set train_on_eot: false" in capsys.readouterr().out  # the advice it gives ...
    assert main(["check-template", "--tokenizer", "bundled:tiny-llama", "--chat-template",
                 deepseek, "--allow-split-markers", "--train-on-eot", "false"]) == 0  # ... taken
    assert "train_on_eot is false" in capsys.readouterr().out


def test_a_recipe_refuses_split_markers_in_one_line_unless_allowed(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"messages": CONVERSATION}) + "\n")
    recipe = {"model": {"name_or_path": "bundled:tiny-llama"}, "chat_template": vendor("glm4moe"),
              "data": {"train": [{"path": str(data), "format": "messages"}],
                       "cache_dir": str(tmp_path / "cache")}}
    path = tmp_path / "glm.yaml"
    path.write_text(json.dumps(recipe))
    assert main(["preview", str(path), "-n", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[gMASK]" in err and "allow_split_markers" in err
    assert main(["preview", str(path), "-n", "1", "allow_split_markers=true"]) == 0
    assert "hello friend" in capsys.readouterr().out


def test_the_run_summary_lists_split_markers(tiny_recipe):
    from tempering.data.datamodule import ConversationDataModule
    from tempering.models import load_fast_tokenizer as load_tokenizer
    from tempering.plugin_manager import build_plugin_manager, build_registry
    from tempering.recipe import load_recipe

    tiny_recipe.update(chat_template=vendor("glm4moe"), allow_split_markers=True)
    recipe = load_recipe(tiny_recipe)
    pm = build_plugin_manager(recipe.plugins)
    dm = ConversationDataModule(recipe, load_tokenizer(recipe.model), pm, build_registry(pm))
    dm.prepare_data()
    assert dm.stats()["template_split_markers"]["[gMASK]"] > 1
    assert TINY.is_dir()
