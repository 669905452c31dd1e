"""The online teacher: a loss chunk sized by a byte budget at the models' vocabularies, a teacher
whose embedding matrix is only padded larger reconciled, another tokenizer refused in one line."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from tempering.chat.encoding import IGNORE_INDEX
from tempering.plugins.loss import compute_loss
from tempering.plugins.objectives import soft_kl
from tempering.recipe import load_recipe
from tempering.train.losses import LossContext, chunk_rows
from tests.conftest import REGISTRY, TINY


def test_the_chunk_is_sized_by_bytes_not_positions():
    assert chunk_rows(None, 256, [131072]) == 512          # 256 MB of fp32 rows at 128k
    assert chunk_rows(None, 256, [131072, 131072]) == 256  # and a teacher
    assert chunk_rows(None, 256, [32000]) == 2097
    assert chunk_rows(None, 0.001, [131072]) == 1          # never 0
    assert chunk_rows(64, 256, [131072]) == 64 and chunk_rows(0, 256, [10]) == 0


def test_the_module_sizes_its_chunk_from_the_policy_and_the_teacher(tiny_recipe):
    from transformers import AutoConfig, AutoModelForCausalLM

    from tempering.plugin_manager import build_plugin_manager, build_registry
    from tempering.train.module import CausalLMModule

    tiny_recipe.update(objective="soft_kl", teacher={"name_or_path": "bundled:tiny-llama"})
    tiny_recipe["train"]["loss_chunk_mb"] = 1
    pm = build_plugin_manager()
    student = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY))
    config = AutoConfig.from_pretrained(TINY)
    config.vocab_size = 1024
    teacher = AutoModelForCausalLM.from_config(config)
    module = CausalLMModule(load_recipe(tiny_recipe), pm, build_registry(pm), model=student,
                            teacher=teacher)
    assert module.loss_chunk_size == 2**20 // (4 * (student.config.vocab_size + 1024))
    assert module.loss_context().chunk_size == module.loss_chunk_size


def _models(teacher_rows: int):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    student = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY)).float()
    torch.manual_seed(7)
    config = AutoConfig.from_pretrained(TINY)
    config.vocab_size = teacher_rows
    return student, AutoModelForCausalLM.from_config(config).float().requires_grad_(False)


@pytest.mark.parametrize("extra", [64, -8])
def test_a_teacher_padded_to_other_rows_is_compared_on_the_shared_rows(extra):
    """Padding rows differ in size (here 64 more, or the student with 8 more): the loss is the
    objective over the rows both have, in training and validation."""
    vocab = json.loads((Path(TINY) / "config.json").read_text())["vocab_size"]
    student, teacher = _models(vocab + extra)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, min(vocab, vocab + extra), (2, 20), generator=g)
    labels = ids.clone()
    labels[:, :6] = IGNORE_INDEX
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    mask = labels[:, 1:] != IGNORE_INDEX
    shared = min(vocab, vocab + extra)
    s = student(input_ids=ids, use_cache=False).logits[:, :-1][mask][:, :shared]
    with torch.no_grad():
        t = teacher(input_ids=ids, use_cache=False).logits[:, :-1][mask][:, :shared]
    want = soft_kl(s, labels[:, 1:][mask], t, temperature=2.0).sum()
    context = LossContext(student, REGISTRY.get("objective", "soft_kl"), {"temperature": 2.0},
                          4, teacher)
    got = compute_loss(context, batch)
    torch.testing.assert_close(got.loss_sum, want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        val = compute_loss(context, batch)
    torch.testing.assert_close(val.loss_sum, want.detach(), rtol=1e-5, atol=1e-5)


def _model_dir(tmp_path: Path, name: str, vocab_rows: int | None = None,
               tokenizer=None) -> Path:
    from tempering.assets import __file__ as assets

    source = Path(assets).parent / "tiny-llama"
    folder = tmp_path / name
    shutil.copytree(source, folder)
    if tokenizer is not None:
        for f in folder.glob("tokenizer*"):
            f.unlink()
        tokenizer.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    if vocab_rows is not None:
        config["vocab_size"] = vocab_rows
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_padded_teacher_trains_end_to_end(tiny_recipe, tmp_path):
    from tempering.train.driver import run_recipe

    rows = json.loads((Path(TINY) / "config.json").read_text())["vocab_size"] + 128
    teacher = _model_dir(tmp_path, "padded-teacher", vocab_rows=rows)
    tiny_recipe.update(objective={"name": "jsd", "beta": 0.5},
                       teacher={"name_or_path": str(teacher), "init": "random",
                                "dtype": "float32"})
    tiny_recipe["trainer"]["max_steps"] = 3
    tiny_recipe["train"]["save_final"] = False
    summary = run_recipe(load_recipe(tiny_recipe))
    assert summary["global_step"] == 3 and math.isfinite(summary["train_loss"])


def test_a_teacher_with_another_tokenizer_is_refused_in_one_line(tiny_recipe, tmp_path):
    from tempering.train.driver import run_recipe
    from tools.build_assets import build_tokenizer, generate_tasks

    texts = [m["content"] for r in generate_tasks(200, seed=4) for m in r["messages"]]
    teacher = _model_dir(tmp_path, "other-teacher", tokenizer=build_tokenizer(texts, 500))
    tiny_recipe.update(objective="soft_kl",
                       teacher={"name_or_path": str(teacher), "init": "random"})
    with pytest.raises(ValueError) as err:
        run_recipe(load_recipe(tiny_recipe))
    message = str(err.value)
    assert "has another tokenizer than the policy" in message and "\n" not in message
    assert "sequence-level distillation" in message and "distill-sequence-quickstart" in message


def test_a_teacher_in_its_own_dtype_beside_a_float32_student(tiny_recipe, monkeypatch):
    """The teacher loads in bf16 (frozen: no master weights), the student in float32; the
    objective gets bf16 teacher logits and computes in float32."""
    import tempering.plugins.objectives as objectives
    from tempering.train.driver import run_recipe

    seen: list[Any] = []
    original = objectives.soft_kl

    def spy(student, labels, teacher=None, **options):
        seen.append((student.dtype, teacher.dtype))
        return original(student, labels, teacher, **options)

    monkeypatch.setattr(objectives, "soft_kl", spy)  # registered when the run's plugins load
    tiny_recipe.update(objective={"name": "soft_kl", "temperature": 2.0},
                       teacher={"name_or_path": "bundled:tiny-llama", "init": "random",
                                "dtype": "bfloat16"})
    tiny_recipe["trainer"]["max_steps"] = 3
    tiny_recipe["train"]["save_final"] = False
    summary = run_recipe(load_recipe(tiny_recipe))
    assert summary["global_step"] == 3 and math.isfinite(summary["train_loss"])
    assert seen and all(pair == (torch.float32, torch.bfloat16) for pair in seen)
