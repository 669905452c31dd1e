"""Many ranks: every example in every epoch, whole validation, FSDP decay groups and grad norm.

The FSDP checks wrap the tiny model with torch's FullyShardedDataParallel in two CPU processes
(gloo): Lightning's FSDPStrategy needs a GPU, but the parameter shards it hands the optimizer
are the same 1-D shards.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tempering.data.packing import plan_epoch
from tests.conftest import TINY, run_cli, write_jsonl

# -- item 9: plans cover every example on any number of ranks ---------------------------------


@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("count", [1, 6, 16, 61])
def test_every_example_is_planned_once_on_any_number_of_ranks(count: int, world_size: int,
                                                              packing: bool) -> None:
    lengths = [10 + (7 * i) % 50 for i in range(count)]
    plan = plan_epoch(lengths, batch_size=2, max_length=64, packing=packing,
                      group_by_length=False, seed=0, epoch=0, world_size=world_size)
    assert len(plan) % world_size == 0
    seen = sorted(i for batch in plan for row in batch for i in row)
    assert seen == list(range(count))
    empties = [k for k, batch in enumerate(plan) if not batch]
    assert len(empties) < world_size and empties == list(range(len(plan) - len(empties),
                                                                 len(plan)))


def _run(recipe: dict, tmp_path: Path, name: str, *overrides: str) -> dict:
    return json.loads((run_cli(recipe, tmp_path, name, *overrides) / "summary.json").read_text())


@pytest.mark.slow
def test_ddp_validates_the_whole_set(tiny_recipe, tmp_path) -> None:
    from tools.build_assets import generate_tasks

    # 5 validation conversations, one per micro-batch: 2 ranks used to validate on 4 of them
    write_jsonl(Path(tiny_recipe["data"]["validation"][0]["path"]), generate_tasks(5, seed=12))
    tiny_recipe["data"].update(packing=False, group_by_length=False)
    tiny_recipe["trainer"].update(max_steps=2, val_check_interval=2)
    ddp = _run(tiny_recipe, tmp_path, "ddp", "data.batch_size=1", "trainer.devices=2",
               "trainer.strategy=ddp")
    single = _run(tiny_recipe, tmp_path, "single", "data.batch_size=2")
    assert ddp["val_conversations"] == 5
    assert ddp["val_loss"] == pytest.approx(single["val_loss"], abs=1e-4)
    assert ddp["val_perplexity"] == pytest.approx(single["val_perplexity"], rel=1e-4)
    assert ddp["empty_micro_batches_per_epoch"] == 0 and single["empty_micro_batches_per_epoch"] == 0


@pytest.mark.slow
def test_ddp_trains_every_example_when_the_ranks_do_not_divide_the_batches(tiny_recipe,
                                                                          tmp_path) -> None:
    # 5 conversations, one per micro-batch on 2 ranks: the third step pairs the last one with
    # an empty micro-batch, so it trains exactly what one process does with 2 per step.
    tiny_recipe["data"]["train"][0]["max_records"] = 5
    tiny_recipe["data"].update(packing=False, group_by_length=False)
    tiny_recipe["trainer"].update(max_steps=3)
    ddp = _run(tiny_recipe, tmp_path, "ddp", "data.batch_size=1", "trainer.devices=2",
               "trainer.strategy=ddp")
    single = _run(tiny_recipe, tmp_path, "single", "data.batch_size=2")
    assert ddp["empty_micro_batches_per_epoch"] == 1
    assert single["empty_micro_batches_per_epoch"] == 0
    from safetensors.torch import load_file

    a = load_file(tmp_path / "ddp" / "final" / "model.safetensors")
    b = load_file(tmp_path / "single" / "final" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)


# -- item 2 and grad norm: FSDP shards ---------------------------------------------------------

_FSDP_SCRIPT = r"""
import json, os, sys
import torch, torch.distributed as dist
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer
from tempering.train.optim import clean_name, decay_groups, grad_norm, no_decay_names

rank, world, out = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), sys.argv[2]
dist.init_process_group("gloo")
config = AutoConfig.from_pretrained(sys.argv[1])
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(config)
reference = AutoModelForCausalLM.from_config(config)
reference.load_state_dict(model.state_dict())
names = {clean_name(n) for n, _ in model.named_parameters()}
no_decay = no_decay_names(model)
wrapped = FSDP(model, use_orig_params=True, device_id=torch.device("cpu"),
               auto_wrap_policy=ModuleWrapPolicy({LlamaDecoderLayer}))
groups = decay_groups(wrapped.named_parameters(), no_decay, names, 0.1)
by_shape = sum(1 for p in wrapped.parameters() if p.ndim >= 2)
ids = torch.arange(1, 33).view(2, 16)
wrapped(input_ids=ids, labels=ids).loss.backward()
reference(input_ids=ids, labels=ids).loss.backward()

def total(t):
    dist.all_reduce(t)
    return t

result = {"decay": len(groups[0]["params"]), "no_decay": len(groups[1]["params"]),
          "by_shape": by_shape,
          "norm": float(grad_norm(wrapped.parameters(), total)),
          "local_norm": float(grad_norm(wrapped.parameters())),
          "reference_norm": float(grad_norm(reference.parameters())),
          "expected_decay": sum(1 for n in names if n not in no_decay), "params": len(names)}
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump(result, f)
dist.barrier()
os._exit(0)  # gloo's threads can abort a normal interpreter shutdown ("terminate called ...")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_fsdp_shards_keep_their_decay_groups_and_report_the_whole_grad_norm(tmp_path) -> None:
    script = tmp_path / "fsdp.py"
    script.write_text(_FSDP_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={_free_port()}", str(script), str(TINY), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["by_shape"] == 0  # the defect: every shard is 1-D, a shape rule decays nothing
        assert r["decay"] == r["expected_decay"] > 0
        assert r["decay"] + r["no_decay"] == r["params"] == 38
        assert r["norm"] == pytest.approx(r["reference_norm"], rel=1e-4)
    assert ranks[0]["local_norm"] < ranks[0]["norm"]  # one shard's norm is not the norm
    assert torch.isfinite(torch.tensor([r["norm"] for r in ranks])).all()
