"""A 2-process DDP run on CPU (gloo) through the CLI, checked against one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY
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


@pytest.mark.slow
def test_lora_adapters_under_two_process_ddp_match_one_process(tiny_recipe, tmp_path):
    """Only the adapters carry gradients, so DDP reduces those alone; the merged weights of
    2 ranks x 1 row equal 1 process x 2 rows."""
    pytest.importorskip("peft")
    from safetensors.torch import load_file

    tiny_recipe["data"].update(packing=False, group_by_length=False)
    tiny_recipe["trainer"].update(max_steps=3)
    tiny_recipe["model"]["lora"] = {"r": 4, "dropout": 0.0, "target_modules": ["all-linear"]}
    ddp = _run(tiny_recipe, tmp_path, "ddp", "data.batch_size=1", "trainer.devices=2",
               "trainer.strategy=ddp")
    single = _run(tiny_recipe, tmp_path, "single", "data.batch_size=2")
    for name in ("model.safetensors", "adapter/adapter_model.safetensors"):
        a, b = load_file(ddp / "final" / name), load_file(single / "final" / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    runs = [json.loads((d / "summary.json").read_text()) for d in (ddp, single)]
    assert abs(runs[0]["train_loss"] - runs[1]["train_loss"]) < 1e-4
    assert runs[0]["trainable_parameters"] == runs[1]["trainable_parameters"]


@pytest.mark.slow
def test_a_teacher_under_ddp_online_or_cached_matches_one_process(tiny_recipe, tmp_path):
    """The teacher is placed by the strategy like the student (online), or its top-k is cached
    by local rank 0 in prepare_data and read by both ranks (cached, k = the whole vocabulary:
    the same loss up to float16 storage)."""
    from safetensors.torch import load_file

    tiny_recipe["data"].update(packing=False, group_by_length=False)
    tiny_recipe["trainer"].update(max_steps=3)
    tiny_recipe.update(objective={"name": "jsd", "beta": 0.5},
                       teacher={"name_or_path": "bundled:tiny-llama", "init": "random",
                                "dtype": "float32",
                                "config_overrides": {"intermediate_size": 256}})
    ddp = ("data.batch_size=1", "trainer.devices=2", "trainer.strategy=ddp")
    single = _run(tiny_recipe, tmp_path, "single", "data.batch_size=2")
    online = _run(tiny_recipe, tmp_path, "online", *ddp)
    vocab = json.loads((Path(TINY) / "config.json").read_text())["vocab_size"]
    cached = _run(tiny_recipe, tmp_path, "cached", *ddp, f"train.teacher_top_k={vocab}")
    weights = {name: load_file(path / "final" / "model.safetensors")
               for name, path in (("single", single), ("online", online))}
    for key in weights["single"]:
        torch.testing.assert_close(weights["online"][key], weights["single"][key], rtol=1e-4,
                                   atol=1e-5, msg=key)
    # Adam's first steps move a weight by about lr whatever its gradient's size, so float16
    # storage shows in the weights; the losses are the comparison
    runs = {name: json.loads((path / "summary.json").read_text())
            for name, path in (("online", online), ("cached", cached))}
    for key in ("train_loss", "val_loss"):
        assert abs(runs["cached"][key] - runs["online"][key]) <= 1e-3 * runs["online"][key]
    assert runs["cached"]["teacher_cache"]["train"]["top_k"] == vocab


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _both_logs(nodes: list, timeout: float) -> list[str]:
    """Each node's output; if either has not finished in time, both are stopped and the test
    fails with both outputs (one node waiting on the other shows only its own)."""
    import subprocess

    try:
        return [node.communicate(timeout=timeout)[0] for node in nodes]
    except subprocess.TimeoutExpired:
        for node in nodes:
            node.kill()
        tails = [f"node {rank} (exit {node.wait()}):\n{(node.communicate()[0] or '')[-3000:]}"
                 for rank, node in enumerate(nodes)]
        pytest.fail(f"the two node ranks did not finish in {timeout:.0f} s\n" + "\n".join(tails))


@pytest.mark.slow
def test_two_nodes_on_localhost_match_one_process_with_the_same_global_batch(tiny_recipe,
                                                                            tmp_path):
    """Two node ranks of one process each, launched by torchrun as on two machines (the
    README's multi-node command, with 127.0.0.1 as the master), gloo on CPU."""
    import os
    import subprocess
    import sys

    tiny_recipe["data"].update(packing=False, group_by_length=False)
    tiny_recipe["trainer"].update(max_steps=3)
    out = tmp_path / "nodes"
    path = tmp_path / "nodes.yaml"
    path.write_text(json.dumps({**tiny_recipe, "train": {**tiny_recipe["train"],
                                                         "output_dir": str(out)}}))
    port = _free_port()
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
         "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
         "-m", "tempering.cli", "run", str(path), "trainer.num_nodes=2", "trainer.devices=1",
         "trainer.strategy=ddp", "data.batch_size=1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for rank in (0, 1)]
    logs = _both_logs(nodes, timeout=240)
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    # one run table, from global rank 0; node 1 trains and prints nothing of its own
    assert "=== tiny: 3 steps" in logs[0] and "=== tiny" not in logs[1]
    single = _run(tiny_recipe, tmp_path, "single", "data.batch_size=2")

    from safetensors.torch import load_file

    a = load_file(out / "final" / "model.safetensors")
    b = load_file(single / "final" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
    two, one = (json.loads((p / "summary.json").read_text()) for p in (out, single))
    assert two["global_step"] == 3 and abs(two["train_loss"] - one["train_loss"]) < 1e-4
