"""The console is for people (issue 6, item 12): no library chatter, step N of M, a short table."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tempering.console import run_table
from tests.conftest import REGISTRY

CHATTER = ("GPU available", "Tip:", "anonymous", "wandb:", "deprecated", "Epoch ")


def _cli_run(recipe: dict, tmp_path: Path, name: str, *flags: str) -> subprocess.CompletedProcess:
    recipe = {**recipe, "train": {**recipe["train"], "output_dir": str(tmp_path / name)},
              "wandb": {"mode": "offline"},
              "trainer": {**recipe["trainer"], "enable_progress_bar": True}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(recipe))
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SILENT", "WANDB_MODE")}
    proc = subprocess.run([sys.executable, "-m", "tempering.cli", *flags, "run", str(path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.mark.slow
def test_a_run_shows_steps_and_a_table_without_library_chatter(tiny_recipe, tmp_path):
    tiny_recipe["eval"] = {"generate_samples": 4, "before_training": True, "max_new_tokens": 8}
    proc = _cli_run(tiny_recipe, tmp_path, "quiet")
    console = proc.stdout + proc.stderr
    for chatter in CHATTER:
        assert chatter not in console, chatter
    assert "Training step 6/6" in proc.stderr.replace("\r", "\n")
    summary = json.loads((tmp_path / "quiet" / "summary.json").read_text())
    table = proc.stdout.strip().splitlines()
    assert len(table) < 15 and "{" not in proc.stdout  # not the summary JSON
    held_out = next(line for line in table if line.startswith("held-out loss")).split()
    assert held_out[-2:] == [f"{summary['val_loss_before']:.3f}", f"{summary['val_loss']:.3f}"]
    assert any(line.startswith("exact match (4 answers)") for line in table)
    assert f"model    {tmp_path / 'quiet' / 'final'}" in table
    assert f"summary  {tmp_path / 'quiet' / 'summary.json'}" in table
    assert any(line.startswith("W&B") and summary["wandb_dir"] in line for line in table)
    verbose = _cli_run(tiny_recipe, tmp_path, "verbose", "-v")  # -v shows the libraries again
    assert "GPU available" in verbose.stderr and "wandb:" in verbose.stderr
    assert "anonymous" not in verbose.stderr  # that warning was ours to avoid, not to hide


def test_the_progress_bar_counts_optimizer_steps_of_the_whole_run(tiny_recipe, capsys):
    from tempering.recipe import load_recipe
    from tempering.train.driver import run_recipe

    tiny_recipe["trainer"].update(enable_progress_bar=True, accumulate_grad_batches=2,
                                  max_steps=5)
    run_recipe(load_recipe(tiny_recipe))
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    steps = [line for line in lines if line.startswith("Training step")]
    assert steps and all(" step " in s and "/5 " in s for s in steps)
    assert steps[-1].startswith("Training step 5/5") and "loss=" in steps[-1]


def test_the_held_out_loss_after_is_of_the_final_weights(tiny_recipe):
    """No validation falls at the last step here, so a final one runs; it matches HF's loss."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tempering.chat.encoding import IGNORE_INDEX, ConversationEncoder
    from tempering.recipe import load_recipe
    from tempering.train.driver import run_recipe

    tiny_recipe["trainer"].update(max_steps=5, val_check_interval=2, check_val_every_n_epoch=None)
    summary = run_recipe(load_recipe(tiny_recipe))
    final = Path(summary["final_model"])
    model = AutoModelForCausalLM.from_pretrained(final).eval()
    tok = AutoTokenizer.from_pretrained(final)
    encoder = ConversationEncoder(tok, chat_template="chatml", registry=REGISTRY)
    total = count = 0.0
    for line in Path(tiny_recipe["data"]["validation"][0]["path"]).read_text().splitlines():
        enc = encoder.encode(json.loads(line)["messages"])
        labels = torch.tensor([enc.labels])
        with torch.no_grad():
            loss = model(torch.tensor([enc.input_ids]), labels=labels).loss
        n = int((labels[0, 1:] != IGNORE_INDEX).sum())
        total, count = total + float(loss) * n, count + n
    assert summary["val_loss"] == pytest.approx(total / count, rel=1e-4)
    assert summary["val_perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)


def test_the_table_says_what_was_not_measured_and_where_things_are():
    summary = {"recipe": "r", "global_step": 1000, "train_seconds": 161.4, "val_conversations": 3,
               "val_loss": 1.0312, "val_perplexity": 2.8045, "exact_match": 0.45,
               "eval_samples": 100, "perf_tokens_per_s": 21231.2,
               "perf_supervised_tokens_per_s": 3355.7, "skipped_records": {"too_long": 2},
               "final_model": "/runs/r/final", "output_dir": "/runs/r",
               "wandb_url": "https://wandb.ai/me/p/runs/abc", "wandb_dir": "/runs/r/wandb/x"}
    table = run_table(summary).splitlines()
    assert table[0] == "=== r: 1000 steps in 2m41s ==="
    assert table[2].split()[-2:] == ["-", "1.031"]  # not measured before (a resumed run)
    assert table[3].split()[-2:] == ["-", "2.80"]
    assert table[4].split()[-2:] == ["-", "0.45"]
    assert "throughput 21,231 tokens/s (3,356 trained tokens/s)" in table
    assert "skipped records: too_long 2" in table
    assert "W&B      https://wandb.ai/me/p/runs/abc" in table
    assert "summary  /runs/r/summary.json" in table
    offline = run_table({**summary, "wandb_url": None, "final_model": None})
    assert "wandb sync /runs/r/wandb/x" in offline and "not saved" in offline
    assert "held-out" not in run_table({**summary, "val_conversations": 0})
    assert "trained parameters" not in "\n".join(table)  # every weight trained: no line
    adapters = run_table({**summary, "trainable_parameters": 8192, "total_parameters": 828544})
    assert "trained parameters 8,192 of 828,544 (1.0%)" in adapters


def test_the_table_shows_mixture_splits_and_turns_before_and_after():
    summary = {"recipe": "r", "global_step": 5, "train_seconds": 3, "val_conversations": 8,
               "val_loss": 1.0, "val_loss_before": 6.0, "exact_match": 0.5,
               "exact_match_before": 0.0, "eval_samples": 8,
               "eval_by_task": {"held_out_tasks/a": {}, "seen_phrasings/b": {}},
               "held_out_tasks/exact_match": 0.25, "held_out_tasks/exact_match_before": 0.0,
               "held_out_tasks/answer_loss": 2.5, "seen_phrasings/exact_match": 0.75,
               "multi_turn": {"answers": 12, "stop_rate": 0.9, "role_confusion_rate": 0.1,
                              "turns": {1: {"loss": 0.5}, 2: {"loss": 0.75}}},
               "multi_turn_before": {"answers": 12, "stop_rate": 0.0,
                                     "role_confusion_rate": 0.0, "turns": {1: {"loss": 6.0}}}}
    import re

    cells = [re.split(r"\s{2,}", line.strip()) for line in run_table(summary).splitlines()[2:]]
    rows: dict = {}
    for c in cells:  # a split's exact match row comes before its answer-loss row
        rows.setdefault(c[0], c[1:])
    assert rows["held out tasks"][-2:] == ["0.00", "0.25"]
    assert rows["seen phrasings"][-2:] == ["-", "0.75"]
    assert rows["turn 1 loss"] == ["6.000", "0.500"] and rows["turn 2 loss"] == ["-", "0.750"]
    assert rows["stopped at end-of-turn (12 turns)"] == ["0.00", "0.90"]
    assert rows["role confusion"] == ["0.00", "0.10"]
    loss = cells.index(["answer loss (teacher-forced)"])
    assert cells[loss + 1] == ["held out tasks", "-", "2.500"]
