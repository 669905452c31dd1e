"""The pytest kit (``tempering.testing``, entry point ``pytest11``) as a plugin author uses it: a
plugin module, a conftest naming it, tests using the fixtures, run by a separate pytest."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

PLUGIN = '''
from tempering import ChatTemplate, MaskingStrategy, hookimpl
from tempering.plugins.chat_templates import CHATML

UPPER = CHATML.replace("message['content']", "message['content'] | upper")


@hookimpl
def register_chat_templates():
    return [ChatTemplate("kit_chatml", CHATML, "ChatML again", ("<|im_start|>", "<|im_end|>")),
            ChatTemplate("kit_upper", UPPER, "shouts", ("<|im_start|>", "<|im_end|>"))]


@hookimpl
def register_masking_strategies():
    return [MaskingStrategy("kit_first", lambda messages: [
        m["role"] == "assistant" and i == next(j for j, x in enumerate(messages)
                                               if x["role"] == "assistant")
        for i, m in enumerate(messages)])]
'''

CONFTEST = '''
import pytest

@pytest.fixture
def tempering_plugins():
    return ["kit_plugin"]
'''

TESTS = '''
import pytest


def test_the_registry_has_the_plugin_and_the_built_ins(tempering_registry):
    assert {"kit_chatml", "chatml"} <= set(tempering_registry.names("chat_template"))


def test_exact_masks(tempering_check_masks, tempering_tokenizer):
    encoded = tempering_check_masks("kit_chatml")
    assert len(encoded) == 3 and all(e.num_supervised > 0 for e in encoded)
    first = tempering_check_masks("kit_chatml", masking="kit_first")
    assert len(first[2].spans) == 1  # the multi-turn sample trains its first answer only


def test_a_template_that_changes_the_answers_fails(tempering_check_masks):
    tempering_check_masks("kit_upper")


def test_a_recipe_runs_with_the_plugin(tempering_run, tempering_recipe):
    summary = tempering_run({**tempering_recipe, "chat_template": "kit_chatml",
                             "masking": "kit_first"}, steps=2)
    assert summary["global_step"] == 2 and summary["train_loss"] > 0


def test_the_tiny_model_generates(tempering_model, tempering_tokenizer):
    ids = tempering_tokenizer("Hello", return_tensors="pt").input_ids
    assert tempering_model.generate(ids, max_new_tokens=2, do_sample=False).shape[1] >= 2
'''


def test_a_plugin_authors_tests_use_the_kit(tmp_path: Path) -> None:
    (tmp_path / "kit_plugin.py").write_text(PLUGIN)
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "conftest.py").write_text(CONFTEST)
    (tests / "test_kit.py").write_text(textwrap.dedent(TESTS))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(tests)], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert "1 failed, 4 passed" in out, out[-3000:]
    # the failing test names its problems, without a traceback into the kit
    assert "chat template 'kit_upper': masks are not exact:" in out
    assert ("conversation 0: TemplateError: template 'kit_upper': cannot locate the content of "
            "message 1") in out
    assert "testing.py" not in out
