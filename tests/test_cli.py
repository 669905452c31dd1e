"""The command line: check-template, preview, plugins, recipes, and one-line errors."""

from __future__ import annotations

import pytest

from tempering.cli import main
from tests.conftest import SHARED, TINY


def test_check_template_passes_on_the_bundled_tokenizer(capsys):
    assert main(["check-template", "--tokenizer", "bundled:tiny-llama"]) == 0
    out = capsys.readouterr().out
    assert "3/3 samples exact" in out and "[[4<|im_end|>]]" in out


def test_check_template_fails_on_a_template_that_drops_the_answer(tmp_path, capsys):
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                      "{% if m['role'] != 'assistant' %}{{ m['content'] }}{% endif %}"
                      "<|im_end|>\n{% endfor %}"
                      "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    code = main(["check-template", "--tokenizer", str(TINY), "--chat-template", str(broken)])
    out = capsys.readouterr().out
    assert code == 1 and "problem: TemplateError" in out and "0/3 samples exact" in out


def test_check_template_on_a_vendor_template(make_tokenizer, tmp_path, capsys):
    path = SHARED / "chat_templates" / "qwen3.jinja"
    if not path.exists():
        pytest.skip("reference templates not found")
    tok = make_tokenizer(path.read_text())
    tok.save_pretrained(tmp_path / "tok")
    assert main(["check-template", "--tokenizer", str(tmp_path / "tok"), "--chat-template",
                 str(path)]) == 0
    assert "[[<think>\n\n</think>\n\nYou're welcome.<|im_end|>]]" in capsys.readouterr().out


def test_preview_shows_trained_tokens_and_the_supervised_ratio(capsys):
    assert main(["preview", "sft-quickstart", "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("tokens trained") == 2 and "supervised-token ratio over 2 examples" in out
    assert "[[" in out


def test_plugins_lists_every_kind_with_its_provider(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for kind in ("chat_template:", "masking:", "objective:"):
        assert kind in out
    assert "tempering.plugins.chat_templates" in out and "cross_entropy" in out


def test_recipes_lists_bundled_recipes(capsys):
    assert main(["recipes"]) == 0
    assert "sft-quickstart" in capsys.readouterr().out


def test_a_recipe_mistake_is_one_line_without_a_traceback(capsys):
    assert main(["run", "sft-quickstart", "optim.lr=fast"]) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith("optim.lr: expected float, got 'fast'")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_serve_on_a_folder_without_a_model_is_one_line(tmp_path, capsys) -> None:
    from tempering.cli import main

    assert main(["serve", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"tempering: error: {tmp_path}: not a saved model directory (no config.json)"
