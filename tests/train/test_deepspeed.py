"""DeepSpeed ZeRO-2/3 (``trainer.strategy: {name: deepspeed, stage: N}``) against one plain process.

The runs go through the CLI in 2 CPU processes (gloo) with ``deepspeed_on_cpu.py``, which lifts
only Lightning's CUDA-only checks. Each case is one that went wrong before tempering's
corrections in ``tempering.train.zero``:

- gradient accumulation: DeepSpeed divided the loss by the accumulation a second time (half the
  gradient norm here; Adam's direction hid it in the weights);
- an epoch ending inside an accumulation window: DeepSpeed's windows run across epochs, so every
  later window shifted (3e-3 off in the weights after 5 steps);
- weight decay under ZeRO-3: every partition is a flat tensor, so all weights were taken for
  1-D ones and none was decayed (2e-3 off).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tempering.data.packing import plan_epoch
from tests.conftest import run_cli
from tests.train.test_adapters import _saved_base

RUNNER = Path(__file__).with_name("deepspeed_on_cpu.py")
ZERO3 = "trainer.strategy={name: deepspeed, stage: 3}"
ZERO2 = "trainer.strategy={name: deepspeed, stage: 2}"
ZERO2_OFFLOAD = "trainer.strategy={name: deepspeed, stage: 2, offload_optimizer: true}"
TWO_RANKS = ("data.batch_size=1", "trainer.devices=2")


def _zero_run(recipe: dict, tmp_path: Path, name: str, *overrides: str) -> Path:
    out = tmp_path / name
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps({**recipe, "train": {**recipe["train"], "output_dir": str(out)}}))
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(RUNNER), "run", str(path), *overrides],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out


def _recipe(tiny_recipe: dict, tmp_path: Path) -> dict:
    """A pretrained base (ZeRO-3 draws a random init in its own order), 10 examples: with 2
    ranks x 1 row and 2 micro-batches a step, an epoch ends inside a window; weight decay high
    enough to show in 5 steps."""
    recipe = json.loads(json.dumps(tiny_recipe))
    recipe["model"] = {"name_or_path": _saved_base(tiny_recipe, tmp_path / "base"),
                       "dtype": "float32"}
    recipe["data"].update(packing=False, group_by_length=False)
    recipe["data"]["train"][0]["max_records"] = 10
    recipe["optim"].update(weight_decay=5.0, scheduler="constant")
    recipe["trainer"].update(max_steps=5, accumulate_grad_batches=2)
    return recipe


def _same_training(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    wa, wb = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert wa[key].dtype == torch.float32, key  # the fp32 masters, not a 16-bit copy
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5, msg=key)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert sa["global_step"] == sb["global_step"] == 5
    assert sa["train_loss"] == pytest.approx(sb["train_loss"], rel=1e-5)
    assert sa["train_grad_norm"] == pytest.approx(sb["train_grad_norm"], rel=1e-4)
    assert sa["total_parameters"] == sb["total_parameters"]  # partitions count whole


@pytest.mark.slow
def test_zero2_and_a_resumed_zero3_on_two_ranks_match_one_process(tiny_recipe, tmp_path):
    """ZeRO-2 with the optimizer offloaded (DeepSpeed's CPU AdamW); ZeRO-3 interrupted."""
    pytest.importorskip("deepspeed")
    recipe = _recipe(tiny_recipe, tmp_path)
    single = run_cli(recipe, tmp_path, "single", "data.batch_size=2")
    zero2 = _zero_run(recipe, tmp_path, "zero2", *TWO_RANKS, ZERO2_OFFLOAD)
    _same_training(zero2, single)
    # ZeRO-3 stopped after step 2 (mid-epoch, partitioned optimizer state in the checkpoint)
    # and resumed to step 5
    _zero_run(recipe, tmp_path, "zero3", *TWO_RANKS, ZERO3, "trainer.max_steps=2")
    zero3 = _zero_run(recipe, tmp_path, "zero3", *TWO_RANKS, ZERO3, "train.resume_from=last")
    _same_training(zero3, single)
    summary = json.loads((zero3 / "summary.json").read_text())
    assert summary["empty_micro_batches_per_epoch"] == 2  # 10 -> 3 whole windows of 2 x 2
    assert (zero3 / "checkpoints" / "last.ckpt" / "latest").exists()  # DeepSpeed's folder


@pytest.mark.slow
def test_distillation_with_a_zero3_partitioned_teacher_matches_one_process(tiny_recipe,
                                                                          tmp_path):
    """The teacher is loaded partitioned too, and its logit check waits for the first step;
    under ZeRO-2 it stays out of the checkpoint and a resumed run ends where one run does."""
    pytest.importorskip("deepspeed")
    recipe = _recipe(tiny_recipe, tmp_path)
    teacher = _saved_base(tiny_recipe, tmp_path / "teacher", intermediate_size=256)
    recipe.update(objective={"name": "jsd", "beta": 0.5},
                  teacher={"name_or_path": teacher, "dtype": "float32"})
    single = run_cli(recipe, tmp_path, "single", "data.batch_size=2")
    zero3 = _zero_run(recipe, tmp_path, "zero3", *TWO_RANKS, ZERO3)
    _same_training(zero3, single)
    # ZeRO-2 checkpoints hold the whole module, less the frozen teacher: a resume keeps the
    # teacher it loaded (it failed on the missing keys before)
    _zero_run(recipe, tmp_path, "zero2", *TWO_RANKS, ZERO2, "trainer.max_steps=2")
    states = torch.load(next((tmp_path / "zero2" / "checkpoints").rglob("*model_states.pt")),
                        map_location="cpu", weights_only=False)
    assert states["module"] and not [k for k in states["module"] if k.startswith("teacher.")]
    zero2 = _zero_run(recipe, tmp_path, "zero2", *TWO_RANKS, ZERO2, "train.resume_from=last")
    _same_training(zero2, single)


# -- the pieces, without a run -------------------------------------------------------------


def test_deepspeed_recipes_build_tempering_zero_strategy():
    pytest.importorskip("deepspeed")
    from tempering.train.driver import build_strategy
    from tempering.train.zero import ZeroStrategy

    strategy = build_strategy({"name": "deepspeed", "stage": 3, "offload_optimizer": True})
    assert isinstance(strategy, ZeroStrategy)
    assert strategy.config["zero_optimization"]["stage"] == 3
    assert strategy.exclude_frozen_parameters  # a frozen teacher stays out of checkpoints


def test_deepspeed_epochs_are_completed_to_whole_accumulation_windows():
    lengths = [10] * 10
    plan = plan_epoch(lengths, batch_size=1, max_length=64, packing=False, group_by_length=False,
                      seed=0, epoch=0, world_size=2, whole_windows=2)
    assert len(plan) == 12 and sum(not b for b in plan) == 2
    assert sorted(i for b in plan for row in b for i in row) == list(range(10))
    plain = plan_epoch(lengths, batch_size=1, max_length=64, packing=False,
                       group_by_length=False, seed=0, epoch=0, world_size=2)
    assert plain == plan[:10]  # the same micro-batches, then the empty ones


def test_zero3_partitions_keep_their_weight_decay_group():
    from tempering.train.optim import decay_groups, no_decay_names

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    for p in model.parameters():  # what ZeRO-3 leaves on a rank: a flat, empty tensor
        p.ds_shape = p.shape
        p.data = torch.empty(0)
    no_decay = no_decay_names(model)
    assert no_decay == {"0.bias", "1.weight", "1.bias"}
    groups = decay_groups(model.named_parameters(), no_decay, {"0.weight", *no_decay}, 0.1)
    assert [len(g["params"]) for g in groups] == [1, 3]
    only_matrices = decay_groups([("0.weight", model[0].weight)], set(), {"0.weight"}, 0.1)
    assert len(only_matrices) == 1  # no empty group for DeepSpeed to drop under the scheduler
