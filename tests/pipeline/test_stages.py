"""generate -> score -> filter -> train -> eval stages: outputs, provenance, resume, ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tempering.pipeline import run_pipeline
from tempering.pipeline.samples import ChunkLog, done_chunks, gather, read_samples
from tempering.recipe import RecipeError, load_recipe
from tests.conftest import kill_after_chunks


def _pipeline(tiny_recipe: dict, **extra) -> dict:
    prompts = tiny_recipe["data"]["validation"]
    return {**tiny_recipe,
            "generate": {"prompts": prompts, "max_prompts": 6, "chunk_size": 4,
                         "sampling": {"n": 3, "temperature": 1.0, "max_new_tokens": 6,
                                      "seed": 5}},
            "score": {"scorers": ["exact_match", {"name": "regex_answer",
                                                  "pattern": "(.)"}]},
            "filter": {"filters": [{"name": "top_k_per_prompt", "k": 2}, "dedup"]},
            "eval": {"prompts": prompts, "max_prompts": 4, "pass_at": 2,
                     "before_training": False},
            **extra}


def test_generate_score_filter_train_eval_end_to_end(tiny_recipe, tmp_path):
    stages = [{"kind": "generate"}, {"kind": "score"}, {"kind": "filter"},
              {"kind": "train", "data": {"train": [{"path": "stage:filter"}]}},
              {"kind": "eval"}]
    summary = run_pipeline(load_recipe(_pipeline(tiny_recipe, stages=stages)))
    base = tmp_path / "run" / "round-1"
    samples = read_samples(base / "0-generate" / "samples.jsonl")
    assert len(samples) == 6 * 3 and len({s["id"] for s in samples}) == 18
    first = samples[0]
    assert first["sampling"]["n"] == 3 and first["sampling"]["temperature"] == 1.0
    assert first["generator"] == "transformers" and first["round"] == 1
    assert first["origin"].endswith("val.jsonl:1") and first["reference"]
    assert first["messages"][-1] == {"role": "assistant", "content": first["text"],
                                     "train": True}
    scored = read_samples(base / "1-score" / "samples.jsonl")
    assert set(scored[0]["scores"]) == {"exact_match", "regex_answer"}
    assert scored[0]["score"] == sum(scored[0]["scores"].values())
    decided = read_samples(base / "2-filter" / "samples.jsonl")
    kept = read_samples(base / "2-filter" / "kept.jsonl")
    assert kept == [d for d in decided if d["kept"]] and len(kept) <= 12
    assert {d["filtered_by"] for d in decided if not d["kept"]} <= {"top_k_per_prompt", "dedup"}
    # the datasets copy holds the same records
    import datasets

    ds = datasets.load_from_disk(str(base / "2-filter" / "dataset"))
    assert ds["id"] == [d["id"] for d in decided] and ds["kept"] == [d["kept"] for d in decided]
    train = json.loads((base / "3-train" / "summary.json").read_text())
    assert train["global_step"] > 0 and train["train_conversations"] == len(kept)
    evaluated = json.loads((base / "4-eval" / "summary.json").read_text())
    assert evaluated["model"] == train["final_model"] and evaluated["eval_prompts"] == 4
    assert 0.0 <= evaluated["pass@1"] <= evaluated["pass@N"] <= 1.0
    assert summary["rounds"][0]["kept"] == len(kept)
    assert summary["rounds"][0]["pass@1"] == evaluated["pass@1"]


def test_model_from_names_the_stage_and_recipe_starts_fresh(tiny_recipe, tmp_path):
    stages = [{"kind": "train", "id": "teacher"},
              {"kind": "generate", "model_from": "teacher", "chat_template": "llama3"},
              {"kind": "train", "id": "student", "model_from": "recipe",
               "chat_template": "llama3", "data": {"train": [{"path": "stage:generate"}]}},
              {"kind": "generate", "id": "after"}]
    run_pipeline(load_recipe(_pipeline(tiny_recipe, stages=stages)))
    base = tmp_path / "run" / "round-1"
    teacher = json.loads((base / "0-teacher" / "summary.json").read_text())["final_model"]
    view = json.loads((base / "1-generate" / "stage_recipe.json").read_text())
    # a trained model comes with the template it was trained with, not the stage's own
    assert view["model"]["name_or_path"] == teacher and view["chat_template"]["name"] == "chatml"
    student = json.loads((base / "2-student" / "stage_recipe.json").read_text())
    assert student["model"]["name_or_path"] == "bundled:tiny-llama"
    assert student["chat_template"]["name"] == "llama3"
    last = json.loads((base / "3-after" / "stage_recipe.json").read_text())
    assert last["model"]["name_or_path"].endswith("2-student/final")
    assert last["chat_template"]["name"] == "llama3"
    after = read_samples(base / "3-after" / "samples.jsonl")[0]["messages"]
    assert after[-1]["train"] and not any(m.get("train") for m in after[:-1])


@pytest.mark.parametrize("stages, message", [
    ([{"kind": "score"}], "stages[0].input: a score stage reads the samples"),
    ([{"kind": "train", "id": "t"}, {"kind": "filter", "input": "t"}],
     "stages[1].input: no earlier stage 't' of that kind"),
    ([{"kind": "generate"}, {"kind": "train", "data": {"train": [{"path": "stage:genrate"}]}}],
     "stages[1].data.train[0].path: no earlier stage 'genrate' of that kind; did you mean "
     "'generate'"),
    ([{"kind": "generate"}, {"kind": "generate"}, {"kind": "generate", "id": "generate-1"}],
     "stages[2].id: 'generate-1' is also stages[1]'s"),
    ([{"kind": "eval", "in_rounds": [3]}], "stages[0].in_rounds: round 3 is not one of 1..1"),
    ([{"kind": "generate", "model_from": "nope"}], "stages[0].model_from: no earlier stage"),
    ([{"kind": "filter", "input": "x", "filter": {"filters": []}}],
     "stages[0].filter.filters: at least one filter is needed by a filter stage"),
])
def test_stage_mistakes_are_one_line(tiny_recipe, stages, message):
    with pytest.raises(RecipeError) as info:
        load_recipe(_pipeline(tiny_recipe, stages=stages))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_torn_chunk_is_cut_and_written_again(tmp_path):
    log = ChunkLog(tmp_path / "part-0.jsonl")
    log.append(0, [{"a": 1}, {"a": 2}])
    log.append(1, [{"a": 3}])
    with (tmp_path / "part-0.jsonl").open("a") as f:  # a kill in the middle of chunk 2
        f.write(json.dumps({"chunk": 2, "a": 4}) + "\n" + '{"chunk": 2, "a"')
    reopened = ChunkLog(tmp_path / "part-0.jsonl")
    assert reopened.chunks == {0, 1} == done_chunks(tmp_path)
    reopened.append(2, [{"a": 4}, {"a": 5}])
    assert [r["a"] for r in gather(tmp_path, 3)] == [1, 2, 3, 4, 5]
    with pytest.raises(RuntimeError, match=r"chunks \[3\] of 4 were never written"):
        gather(tmp_path, 4)


def _generate_recipe(tiny_recipe: dict, out: Path, **generate) -> Path:
    recipe = _pipeline(tiny_recipe, stages=[{"kind": "generate"}])
    recipe["train"] = {**recipe["train"], "output_dir": str(out)}
    recipe["generate"] = {**recipe["generate"], "max_prompts": None, **generate}
    path = out.parent / f"{out.name}.json"
    path.write_text(json.dumps(recipe))
    return path


def _samples(out: Path) -> list[dict]:
    return read_samples(out / "round-1" / "0-generate" / "samples.jsonl")


def test_a_generation_killed_with_sigkill_continues_without_duplicates(tiny_recipe, tmp_path):
    plain = _generate_recipe(tiny_recipe, tmp_path / "plain", chunk_size=1)
    killed = _generate_recipe(tiny_recipe, tmp_path / "killed", chunk_size=1)
    run = [sys.executable, "-m", "tempering.cli", "run"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    part = tmp_path / "killed" / "round-1" / "0-generate" / "part-0.jsonl"
    kill_after_chunks([*run, str(killed)], env, part)
    assert not (part.parent / "samples.jsonl").exists()
    subprocess.run([*run, str(killed)], env=env, check=True, capture_output=True, timeout=300)
    subprocess.run([*run, str(plain)], env=env, check=True, capture_output=True, timeout=300)
    resumed, reference = _samples(tmp_path / "killed"), _samples(tmp_path / "plain")
    assert len(resumed) == 12 * 3 and len({r["id"] for r in resumed}) == len(resumed)
    assert resumed == reference  # seeded per chunk: the same samples as a run never killed


def test_two_ranks_share_the_prompts_none_lost_or_drawn_twice(tiny_recipe, tmp_path):
    one = load_recipe(json.loads(_generate_recipe(tiny_recipe, tmp_path / "one").read_text()))
    two = load_recipe(json.loads(_generate_recipe(tiny_recipe, tmp_path / "two", devices=2,
                                                  accelerator="cpu").read_text()))
    run_pipeline(one)
    run_pipeline(two)
    folder = tmp_path / "two" / "round-1" / "0-generate"
    assert not list(folder.glob("part-*.jsonl"))  # both ranks' parts were gathered
    a, b = _samples(tmp_path / "one"), _samples(tmp_path / "two")
    assert len(b) == 12 * 3 and len({r["id"] for r in b}) == len(b)
    assert a == b


def test_a_backend_or_scorer_that_asks_for_its_own_process_gets_one_per_stage(tiny_recipe,
                                                                            tmp_path):
    """vLLM's or a reward model's GPU memory must be gone before training: such a backend or
    scorer runs in a spawned process that ends with the stage, even on one device."""
    recipe = _pipeline(tiny_recipe, plugins=["tests.pipeline.pid_backend"],
                       stages=[{"kind": "generate"}, {"kind": "score"}, {"kind": "eval"}])
    recipe["generate"]["generator"] = {"name": "pid_echo"}
    recipe["score"] = {"scorers": ["pid_score"]}
    run_pipeline(load_recipe(recipe))
    base = tmp_path / "run" / "round-1"
    generated = {s["text"] for s in read_samples(base / "0-generate" / "samples.jsonl")}
    scored = {str(int(s["score"])) for s in read_samples(base / "1-score" / "samples.jsonl")}
    evaluated = read_samples(base / "2-eval" / "samples.jsonl")
    in_eval = {s["text"] for s in evaluated} | {str(int(s["score"])) for s in evaluated}
    assert len(generated) == len(scored) == len(in_eval) == 1
    assert len(generated | scored | in_eval) == 3
    assert str(os.getpid()) not in generated | scored | in_eval


def test_each_sample_stage_logs_a_table_and_a_dataset_artifact_to_wandb(tiny_recipe, tmp_path):
    from tests.wandb_offline import read_run, records

    recipe = _pipeline(tiny_recipe, stages=[{"kind": "generate"}, {"kind": "score"}],
                       wandb={"enabled": True, "mode": "offline", "project": "t"})
    run_pipeline(load_recipe(recipe))
    folder = tmp_path / "run" / "round-1" / "1-score"
    summary = json.loads((folder / "summary.json").read_text())
    run_dir = Path(summary["wandb_dir"])
    run = read_run(run_dir)
    table = next(h for h in run["history"] if "samples/_type" in h)
    assert table["samples/_type"] == "table-file" and table["samples/nrows"] == 18
    assert run["summary"]["num_samples"] == 18 and run["summary"]["stage"] == "score"
    logged = [r.artifact for r in records(next(run_dir.glob("run-*.wandb")))
              if r.WhichOneof("record_type") == "artifact" and r.artifact.type == "dataset"]
    assert len(logged) == 1 and json.loads(logged[0].metadata)["records"] == 18
    assert {e.path for e in logged[0].manifest.contents} == {"samples.jsonl"}


def test_a_student_with_its_own_tokenizer_and_template_trains_on_the_teachers_samples(
        tiny_recipe, tmp_path):
    """Sequence distillation across tokenizers: samples are stored as messages, and the
    student renders them with its own template and tokenizes them with its own tokenizer."""
    from transformers import AutoTokenizer

    from tools.build_assets import build_tokenizer, generate_tasks, tiny_llama_config

    texts = [m["content"] for r in generate_tasks(300, seed=4) for m in r["messages"]]
    student_tok = build_tokenizer(texts, vocab_size=420)
    student_dir = tmp_path / "student-model"
    student_tok.save_pretrained(student_dir)
    tiny_llama_config(student_tok).save_pretrained(student_dir)
    stages = [{"kind": "train", "id": "teacher"},
              {"kind": "generate", "model_from": "teacher"},
              {"kind": "train", "id": "student", "model_from": "recipe",
               "model": {"name_or_path": str(student_dir)}, "chat_template": "llama3",
               "data": {"train": [{"path": "stage:generate"}]}}]
    run_pipeline(load_recipe(_pipeline(tiny_recipe, stages=stages)))
    base = tmp_path / "run" / "round-1"
    summary = json.loads((base / "2-student" / "summary.json").read_text())
    final = Path(summary["final_model"])
    teacher_tok = AutoTokenizer.from_pretrained(base / "0-teacher" / "final")
    trained_tok = AutoTokenizer.from_pretrained(final)
    assert len(trained_tok) == len(student_tok) != len(teacher_tok)
    assert json.loads((final / "config.json").read_text())["vocab_size"] == len(student_tok)
    assert "<|start_header_id|>" in (final / "chat_template.jinja").read_text()
    sample = read_samples(base / "1-generate" / "samples.jsonl")[0]["messages"]
    rendered = trained_tok.apply_chat_template(sample[:-1], tokenize=False)
    assert "<|start_header_id|>user" in rendered and "<|im_start|>" not in rendered
    content = sample[0]["content"]
    assert trained_tok(content)["input_ids"] != teacher_tok(content)["input_ids"]


def test_a_student_distils_online_from_a_teacher_trained_in_the_recipe(tiny_recipe, tmp_path):
    stages = [{"kind": "train", "id": "teacher"},
              {"kind": "train", "id": "student", "model_from": "recipe",
               "model": {"config_overrides": {"hidden_size": 32, "intermediate_size": 64,
                                              "num_hidden_layers": 1}},
               "objective": {"name": "jsd", "beta": 0.5}}]
    recipe = _pipeline(tiny_recipe, stages=stages,
                       teacher={"name_or_path": "stage:teacher", "dtype": "float32"})
    run_pipeline(load_recipe(recipe))
    base = tmp_path / "run" / "round-1"
    teacher_view = json.loads((base / "0-teacher" / "stage_recipe.json").read_text())
    student_view = json.loads((base / "1-student" / "stage_recipe.json").read_text())
    assert teacher_view["teacher"] is None  # a stage whose objective needs none loads none
    assert student_view["teacher"]["name_or_path"].endswith("0-teacher/final")
    config = json.loads((base / "1-student" / "final" / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"]) == (32, 1)
    summary = json.loads((base / "1-student" / "summary.json").read_text())
    assert summary["global_step"] == 6 and summary["val_perplexity"] > 1


@pytest.mark.parametrize("change, message", [
    ({"teacher": {"name_or_path": "stage:teachr"}},
     "teacher.name_or_path: stage:teachr: no training stage 'teachr'; did you mean 'teacher'"),
    ({"model": {"config_overrides": {"hidden_sise": 8}}, "model_init": "random"},
     "model.config_overrides.hidden_sise: not a key of LlamaConfig"),
    ({"model": {"config_overrides": {"hidden_size": 8}}, "model_init": "pretrained"},
     "model.config_overrides: only with model.init: random"),
])
def test_teacher_and_student_mistakes_are_one_line(tiny_recipe, change, message):
    init = change.pop("model_init", None)
    stages = [{"kind": "train", "id": "teacher"},
              {"kind": "train", "id": "student", "objective": "soft_kl"}]
    recipe = _pipeline(tiny_recipe, stages=stages,
                       teacher={"name_or_path": "stage:teacher"})
    for key, value in change.items():
        recipe[key] = {**recipe.get(key, {}), **value} if key != "teacher" else value
    if init:
        recipe["model"]["init"] = init
    with pytest.raises(RecipeError) as err:
        run_pipeline(load_recipe(recipe))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_mistake_in_a_spawned_stage_process_is_one_line(tiny_recipe):
    recipe = _pipeline(tiny_recipe, plugins=["tests.pipeline.pid_backend"],
                       stages=[{"kind": "generate"}, {"kind": "score"}])
    recipe["score"] = {"scorers": [{"name": "pid_refuse", "threshold": 2}]}
    with pytest.raises(RecipeError) as err:
        run_pipeline(load_recipe(recipe))
    assert str(err.value) == "round-1/1-score: pid_refuse: threshold 2 is not allowed"
