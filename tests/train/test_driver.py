"""End-to-end training on the tiny model: tracking, resume, exact token mean, bad records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tempering.cli import main
from tempering.plugins.chat_templates import CHATML
from tempering.recipe import load_recipe
from tempering.train.driver import run_recipe
from tests.conftest import write_jsonl
from tests.wandb_offline import read_run, records


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "final" / "model.safetensors")


def test_run_tracks_everything_in_wandb_offline(tiny_recipe, tmp_path):
    tiny_recipe["wandb"] = {"mode": "offline", "log_examples": 4, "log_model": True}
    tiny_recipe["eval"] = {"generate_samples": 3, "max_new_tokens": 8, "before_training": True}
    tiny_recipe["trainer"].update(max_steps=6, log_every_n_steps=1, val_check_interval=3)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [\n')
    tiny_recipe["data"]["train"].append({"path": str(bad)})
    tiny_recipe["data"]["on_bad_record"] = "skip"
    summary = run_recipe(load_recipe(tiny_recipe))

    assert summary["global_step"] == 6 and summary["exact_match"] is not None
    final = Path(summary["final_model"])
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(final).chat_template == CHATML
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["global_step"] == 6

    run_dir = Path(summary["wandb_dir"])
    logged = read_run(run_dir)
    keys = {k for row in logged["history"] for k in row}
    for key in ("train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_s",
                "perf/supervised_tokens_per_s", "train/supervised_ratio", "train/padding_ratio",
                "val/loss", "val/perplexity"):
        assert key in keys, key
    losses = [row["train/loss"] for row in logged["history"] if "train/loss" in row]
    assert len(losses) == 6 and all(loss > 0 for loss in losses)
    assert logged["config"]["template/name"] == "chatml"
    assert logged["config"]["masking"] == {"name": "all_assistant", "options": {}}
    assert logged["config"]["tokenizer/vocab_size"] > 100
    assert logged["summary"]["global_step"] == 6
    assert logged["summary"]["skipped/malformed_json"] == 1
    assert logged["config"]["data/stats"]["skipped_records"] == {"malformed_json": 1}
    tables = list(run_dir.glob("files/media/table/train/examples*.table.json"))
    assert tables, "no examples table"
    table = json.loads(tables[0].read_text())
    assert table["columns"][:3] == ["origin", "text", "trained"] and len(table["data"]) == 4
    assert all("[[" in row[1] and "<|im_end|>" in row[2] for row in table["data"])
    log = records(next(run_dir.glob("run-*.wandb")))
    assert any(r.WhichOneof("record_type") == "artifact" for r in log)


class _KillAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_a_killed_and_resumed_run_ends_where_the_uninterrupted_run_ends(tiny_recipe, tmp_path):
    tiny_recipe["trainer"]["max_steps"] = 14  # crosses an epoch boundary
    tiny_recipe["train"]["checkpoint_every_n_steps"] = 5
    whole = dict(tiny_recipe, train={**tiny_recipe["train"], "output_dir": str(tmp_path / "a")})
    run_recipe(load_recipe(whole))

    broken = dict(tiny_recipe, train={**tiny_recipe["train"], "output_dir": str(tmp_path / "b")})
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_recipe(load_recipe(broken), callbacks=[_KillAt(8)])
    assert (tmp_path / "b" / "checkpoints" / "last.ckpt").exists()
    summary = run_recipe(load_recipe(broken, ["train.resume_from=last"]))
    assert summary["global_step"] == 14

    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)


class _Grads(Callback):
    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        if not self.grads:
            self.grads = {n: p.grad.clone() for n, p in module.model.named_parameters()}


def test_gradient_is_the_token_mean_whatever_the_micro_batching(tiny_recipe):
    tiny_recipe["data"].update(packing=False, group_by_length=False)
    tiny_recipe["trainer"]["max_steps"] = 1
    grads = []
    for batch_size, accumulate in [(4, 1), (2, 2), (1, 4)]:
        recipe = load_recipe(tiny_recipe, [f"data.batch_size={batch_size}",
                                           f"trainer.accumulate_grad_batches={accumulate}",
                                           "train.overwrite=true"])
        cb = _Grads()
        run_recipe(recipe, callbacks=[cb])
        grads.append(cb.grads)
    for other in grads[1:]:
        for name, g in grads[0].items():
            torch.testing.assert_close(other[name], g, rtol=1e-4, atol=1e-6, msg=name)


BAD_LINES = [
    '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}',
    '{"messages": [{"role": "user", "content": "hi"}',  # malformed JSON
    '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}',  # missing field
    '{"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "yo"}]}',
    '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}',
    '{"messages": [{"role": "user", "content": "hi"}]}',  # no assistant
    json.dumps({"messages": [{"role": "user", "content": "long " * 200},
                             {"role": "assistant", "content": "yo"}]}),  # too long
]


def _bad_recipe(tiny_recipe, tmp_path, lines):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    good = tiny_recipe["data"]["train"][0]
    tiny_recipe["data"]["train"] = [good, {"path": str(path), "format": "messages"}]
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(json.dumps(tiny_recipe))  # JSON is YAML
    return recipe_path, path


@pytest.mark.parametrize(("line", "expect"), [
    (2, "bad.jsonl:2: invalid JSON"),
    (3, "bad.jsonl:3, field messages[1].content"),
    (4, "bad.jsonl:4, field messages[0].role"),
    (5, "bad.jsonl:5, field messages[1].content"),
    (6, "bad.jsonl:6: the conversation has no assistant message"),
])
def test_a_bad_record_is_one_line_naming_file_line_and_field(tiny_recipe, tmp_path, capsys,
                                                             line, expect):
    recipe_path, _ = _bad_recipe(tiny_recipe, tmp_path, [BAD_LINES[0], *BAD_LINES[line - 1:line]])
    recipe_path.write_text(recipe_path.read_text())
    # put the bad line at its line number
    lines = [BAD_LINES[0]] * (line - 1) + [BAD_LINES[line - 1]]
    _bad_recipe(tiny_recipe, tmp_path, lines)
    assert main(["run", str(recipe_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert expect in err and "on_bad_record: skip" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_skipped_records_are_counted_by_kind(tiny_recipe, tmp_path):
    recipe_path, _ = _bad_recipe(tiny_recipe, tmp_path, BAD_LINES)
    recipe = load_recipe(str(recipe_path), ["data.on_bad_record=skip", "trainer.max_steps=2"])
    summary = run_recipe(recipe)
    assert summary["skipped_records"] == {"malformed_json": 1, "missing_field": 1,
                                          "unknown_role": 1, "empty_assistant": 1,
                                          "no_assistant": 1, "too_long": 1}
    assert summary["train_conversations"] == 64 + 1


def test_truncating_to_leading_turns_and_zero_supervised_tokens(tiny_recipe, tmp_path):
    long_first = {"messages": [{"role": "user", "content": "long " * 200},
                               {"role": "assistant", "content": "yo"}]}
    long_last = {"messages": [{"role": "user", "content": "hi"},
                              {"role": "assistant", "content": "yo"},
                              {"role": "user", "content": "long " * 200},
                              {"role": "assistant", "content": "yo"}]}
    path = write_jsonl(tmp_path / "long.jsonl", [long_first, long_last])
    tiny_recipe["data"]["train"].append({"path": str(path), "format": "messages"})
    recipe = load_recipe(tiny_recipe, ["data.overflow=truncate_turns", "data.on_bad_record=skip",
                                       "trainer.max_steps=1"])
    summary = run_recipe(recipe)
    # long_first's first turn does not fit: too long, as under `drop` (not an error kind)
    assert summary["skipped_records"] == {"too_long": 1}
    assert summary["train_conversations"] == 64 + 1  # long_last kept its first turn
    assert summary["overflow"] == {"policy": "truncate_turns", "fitted": 1, "examples": 1,
                                   "dropped": 1, "turns_dropped": 1}  # its second answer


@pytest.mark.gpu
def test_a_bf16_mixed_run_on_a_gpu_matches_the_fp32_cpu_run(tiny_recipe, tmp_path) -> None:
    cpu = run_recipe(load_recipe(tiny_recipe))
    tiny_recipe["train"]["output_dir"] = str(tmp_path / "gpu")
    tiny_recipe["trainer"].update(accelerator="gpu", precision="bf16-mixed")
    gpu = run_recipe(load_recipe(tiny_recipe))
    assert gpu["global_step"] == cpu["global_step"] == 6
    assert gpu["val_loss"] == pytest.approx(cpu["val_loss"], rel=0.02)
