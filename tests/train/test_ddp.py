"""A 2-process DDP run on CPU (gloo) through the CLI, checked against one process."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_cli as _run


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tiny_recipe, tmp_path):
    tiny_recipe["data"].update(packing=False, group_by_length=False)
    tiny_recipe["trainer"].update(max_steps=3)
    ddp = _run(tiny_recipe, tmp_path, "ddp", "data.batch_size=1", "trainer.devices=2",
               "trainer.strategy=ddp")
    single = _run(tiny_recipe, tmp_path, "single", "data.batch_size=2")
    summary = json.loads((ddp / "summary.json").read_text())
    assert summary["global_step"] == 3

    from safetensors.torch import load_file

    a = load_file(ddp / "final" / "model.safetensors")
    b = load_file(single / "final" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
    # and the exact token mean makes the logged step loss identical too
    s_single = json.loads((single / "summary.json").read_text())
    assert abs(summary["train_loss"] - s_single["train_loss"]) < 1e-4
