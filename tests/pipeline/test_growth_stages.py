"""self_instruct -> instances -> train and evolve -> train: every candidate accounted for,
provenance, W&B tables, resume after a kill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tempering.pipeline import run_pipeline
from tempering.pipeline.samples import read_samples
from tempering.recipe import RecipeError, load_recipe
from tests.conftest import kill_after_chunks

PLUGIN = "tests.pipeline.scripted_backend"


def _recipe(tiny_recipe: dict, shared_data: Path, stages: list, **extra) -> dict:
    seeds = [{"path": str(shared_data / "alpaca_seed_tasks.jsonl")}]
    return {**tiny_recipe, "plugins": [PLUGIN],
            "generate": {"generator": {"name": "scripted"},
                         "sampling": {"n": 2, "seed": 1, "max_new_tokens": 64}},
            "self_instruct": {"seeds": seeds, "num_instructions": 12, "prompts_per_step": 3,
                              "chunk_size": 4},
            "evolve": {"seeds": [{**seeds[0], "max_records": 10}], "rounds": 3,
                       "chunk_size": 4},
            "stages": stages, **extra}


def _accounted(folder: Path) -> tuple[list[dict], list[dict], dict]:
    kept = read_samples(folder / "samples.jsonl")
    rejects = read_samples(folder / "rejects.jsonl")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["candidates"] == len(kept) + len(rejects)
    assert summary["kept"] == len(kept) and summary["rejected"] == len(rejects)
    assert all(r["filtered_by"] and r["filter_reason"] for r in rejects)
    by: dict[str, int] = {}
    for r in rejects:
        by[r["filtered_by"]] = by.get(r["filtered_by"], 0) + 1
    assert summary["rejected_by"] == by
    return kept, rejects, summary


def test_self_instruct_then_instances_then_training(tiny_recipe, shared_data, tmp_path):
    stages = [{"kind": "self_instruct"}, {"kind": "instances"},
              {"kind": "train", "data": {"train": [{"path": "stage:instances",
                                                    "format": "messages"}]}}]
    recipe = _recipe(tiny_recipe, shared_data, stages, wandb={"mode": "offline"})
    run_pipeline(load_recipe(recipe))
    base = tmp_path / "run" / "round-1"
    kept, rejects, summary = _accounted(base / "0-self_instruct")
    assert summary["reached"] and len(kept) >= 12 and summary["seeds"] == 175
    reasons = {r["filtered_by"] for r in rejects}
    assert {"parse", "keywords", "word_length"} <= reasons  # truncated tail, "Draw", "Reply"
    assert reasons & {"rouge_novelty", "exact_duplicate"}  # the repeated item
    assert any(r["filter_reason"] == "cut off by max_new_tokens" for r in rejects)
    first = kept[0]
    assert first["origin"] == "machine" and len(first["shown"]) == 8 and first["step"] == 0
    # From the second step on, prompts show instructions grown earlier.
    grown = {k["instruction"] for k in kept}
    assert any(set(k["shown"]) & grown for k in kept if k["step"] > 0)
    inst, inst_rejects, inst_summary = _accounted(base / "1-instances")
    assert inst_summary["tasks"] == len(kept)
    assert sum(inst_summary["classification"].values()) == len(kept)
    assert {r["filter_reason"] for r in inst_rejects} >= {"no output"}
    assert all(r["messages"][0]["content"].startswith(r["instruction"]) for r in inst)
    assert all(r["messages"][1] == {"role": "assistant", "content": r["output"], "train": True}
               for r in inst)
    label_first = [r for r in inst if r["is_classification"]]
    assert all(r["output"] in ("positive", "negative") for r in label_first)
    train = json.loads((base / "2-train" / "summary.json").read_text())
    assert train["final_model"] and train["global_step"] == 6
    # W&B: the kept and the rejected, as tables, and the rejections by filter.
    wandb_dir = Path(summary["wandb_dir"])
    tables = {p.name.split("_")[0] for p in wandb_dir.rglob("*.table.json")}
    assert {"samples", "rejects"} <= tables
    from tests.wandb_offline import read_run

    logged = read_run(wandb_dir)["summary"]
    assert {k: v for k, v in logged.items() if k.startswith("rejected_by/")} == {
        f"rejected_by/{k}": v for k, v in summary["rejected_by"].items()}
    assert logged["kept"] == len(kept)


def test_evolve_records_seed_operator_chain_and_round(tiny_recipe, shared_data, tmp_path):
    stages = [{"kind": "evolve"},
              {"kind": "train", "data": {"train": [{"path": "stage:evolve",
                                                    "format": "messages"}],
                                         "max_length": 1024}}]
    recipe = _recipe(tiny_recipe, shared_data, stages)
    recipe["evolve"]["seeds"][0]["max_records"] = 24
    run_pipeline(load_recipe(recipe))
    folder = tmp_path / "run" / "round-1" / "0-evolve"
    kept, rejects, summary = _accounted(folder)
    assert summary["candidates"] == 24 * 3  # every seed, every round
    assert {r["filtered_by"] for r in rejects} >= {"copies_prompt", "refusal"}
    assert len(kept) >= 5, "hardly anything survived elimination"
    for r in kept + rejects:
        assert r["seed_id"].startswith("seed_task_") and 1 <= r["round"] <= 3
        assert r["operators"][-1] == r["operator"] and len(r["operators"]) <= r["round"]
        assert r["operators"][:-1] == r["parent_operators"]
    # A kept evolution's parent is the instruction its chain had reached.
    by_round = {(r["seed_id"], r["round"]): r for r in kept + rejects}
    for r in kept + rejects:
        before = by_round.get((r["seed_id"], r["round"] - 1))
        if before is not None:
            assert r["parent"] == (before["instruction"] if before["accepted"]
                                   else before["parent"])
    assert not any("#New Instruction#" in r["instruction"] for r in kept)
    assert all(r["messages"][0]["content"] == r["instruction"] for r in kept)
    assert summary["filter_notes"].get("no_gain: unclear answer, kept", 0) >= 0
    assert (tmp_path / "run" / "round-1" / "1-train" / "summary.json").exists()


def test_a_stage_without_seeds_is_refused_when_the_recipe_loads(tiny_recipe, shared_data):
    recipe = _recipe(tiny_recipe, shared_data, [{"kind": "self_instruct"}])
    recipe["self_instruct"] = {"num_instructions": 3}
    with pytest.raises(RecipeError, match=r"stages\[0\]\.self_instruct\.seeds: at least one"):
        load_recipe(recipe)
    recipe = _recipe(tiny_recipe, shared_data, [{"kind": "instances"}])
    with pytest.raises(RecipeError, match=r"stages\[0\]\.input: a instances stage reads"):
        load_recipe(recipe)


def _grow_recipe(tiny_recipe, shared_data, out: Path) -> Path:
    recipe = _recipe(tiny_recipe, shared_data, [{"kind": "self_instruct"}],
                     train={"output_dir": str(out), "seed": 3})
    recipe["generate"]["generator"] = {"name": "scripted", "delay": 0.3}
    recipe["self_instruct"]["num_instructions"] = 25
    path = out.with_suffix(".json")
    path.write_text(json.dumps(recipe))
    return path


def test_a_self_instruct_stage_killed_with_sigkill_resumes_to_the_same_pool(
        tiny_recipe, shared_data, tmp_path):
    run = [sys.executable, "-m", "tempering.cli", "run"]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(Path.cwd())}
    killed = _grow_recipe(tiny_recipe, shared_data, tmp_path / "killed")
    part = tmp_path / "killed" / "round-1" / "0-self_instruct" / "part-0.jsonl"
    kill_after_chunks([*run, str(killed)], env, part)
    resumed = subprocess.run([*run, str(killed)], env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming round-1/0-self_instruct after step" in resumed.stderr
    plain = _grow_recipe(tiny_recipe, shared_data, tmp_path / "plain")
    subprocess.run([*run, str(plain)], env=env, check=True, capture_output=True, timeout=300)
    for name in ("samples.jsonl", "rejects.jsonl"):
        a = read_samples(tmp_path / "killed" / "round-1" / "0-self_instruct" / name)
        b = read_samples(tmp_path / "plain" / "round-1" / "0-self_instruct" / name)
        assert a == b and len({r["id"] for r in a}) == len(a)


def test_the_prompt_wording_is_the_recipes(tiny_recipe, shared_data):
    import random

    from tempering.pipeline.growth import read_tasks
    from tempering.pipeline.self_instruct import _prompts
    from tempering.recipe import DataSource

    recipe = _recipe(tiny_recipe, shared_data, [{"kind": "self_instruct"}])
    recipe["self_instruct"]["prompt"] = "Give me {count} more, please:\n{examples}"
    view = load_recipe(recipe).stages[0]
    tasks = read_tasks([DataSource(path=str(shared_data / "alpaca_seed_tasks.jsonl"))], "s")
    (prompt, shown), *_ = _prompts(view, tasks, ["A grown one.", "Another grown one."],
                                   random.Random(0))
    assert prompt.startswith("Give me 8 more, please:\n1. ") and len(shown) == 8
    assert {"A grown one.", "Another grown one."} <= set(shown)


def test_an_evolve_stage_that_failed_in_round_two_resumes_to_the_same_examples(
        tiny_recipe, shared_data, tmp_path):
    stages = [{"kind": "evolve"}]
    plain = _recipe(tiny_recipe, shared_data, stages, train={"output_dir": str(tmp_path / "a")})
    run_pipeline(load_recipe(plain))
    failing = _recipe(tiny_recipe, shared_data, stages, train={"output_dir": str(tmp_path / "b")})
    failing["generate"]["generator"] = {"name": "scripted", "fail_after": 8,
                                        "marker": str(tmp_path / "failed-once")}
    with pytest.raises(RuntimeError, match="scripted failure"):
        run_pipeline(load_recipe(failing))
    folder = tmp_path / "b" / "round-1" / "0-evolve"
    assert (folder / "evolution-1").exists() and not (folder / "summary.json").exists()
    run_pipeline(load_recipe(failing))
    for name in ("samples.jsonl", "rejects.jsonl"):
        a = read_samples(tmp_path / "a" / "round-1" / "0-evolve" / name)
        b = read_samples(folder / name)
        assert [r["id"] for r in a] == [r["id"] for r in b]
        assert [r["instruction"] for r in a] == [r["instruction"] for r in b]
