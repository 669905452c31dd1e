"""A run's held-out evaluation end to end: a task mixture scored per task and split, and the
turn-by-turn evaluation of multi-turn conversations, in the summary and in W&B."""

from __future__ import annotations

import json
from pathlib import Path

from tempering.recipe import load_recipe
from tempering.train.driver import run_recipe
from tests.conftest import write_jsonl
from tests.wandb_offline import read_run


def _table(run_dir: Path, key: str) -> dict:
    (path,) = run_dir.glob(f"files/media/table/{key}*.table.json")
    return json.loads(path.read_text())


def test_a_mixture_run_reports_each_task_and_split(tiny_recipe, tmp_path) -> None:
    tiny_recipe["data"].update(train=[], validation=[], mixture={
        "tasks": [{"task": "parity", "records": 300}, {"task": "addition", "records": 300},
                  {"task": "quoted_word", "records": 300}],
        "held_out_tasks": [{"task": "subtraction"}],
        "held_out_phrasings": [4], "examples": 200, "eval_examples": 4, "sampling": "explicit"})
    tiny_recipe["plugins"] = []
    tiny_recipe["eval"] = {"generate_samples": 2, "max_new_tokens": 6, "before_training": True}
    tiny_recipe["wandb"] = {"mode": "offline", "log_examples": 0}
    summary = run_recipe(load_recipe(tiny_recipe))

    mixture = summary["mixture"]
    assert set(mixture["tasks"]) == {"parity", "addition", "quoted_word"}
    assert sum(t["examples"] for t in mixture["tasks"].values()) == 200
    assert mixture["eval_conversations"] == {"seen_phrasings": 12, "held_out_phrasings": 12,
                                             "held_out_tasks": 4}
    # validation loss covers every held-out conversation; generation 2 per task and split
    assert summary["val_conversations"] == 28 and summary["eval_samples"] == 14
    groups = summary["eval_by_task"]
    assert set(groups) == {f"{s}/{t}" for s in ("seen_phrasings", "held_out_phrasings")
                           for t in ("parity", "addition", "quoted_word")} | {
        "held_out_tasks/subtraction"}
    assert all(g["n"] == 2 and 0 <= g["exact_match"] <= 1 and "exact_match_before" in g
               and g["answer_loss"] > 0 and g["answer_loss_before"] > 0 for g in groups.values())
    for split in ("seen_phrasings", "held_out_phrasings", "held_out_tasks"):
        tasks = [g["exact_match"] for k, g in groups.items() if k.startswith(split + "/")]
        assert summary[f"{split}/exact_match"] == sum(tasks) / len(tasks)
        assert f"{split}/exact_match_before" in summary

    run_dir = Path(summary["wandb_dir"])
    logged = read_run(run_dir)["summary"]
    assert logged["mixture/parity/examples"] == mixture["tasks"]["parity"]["examples"]
    assert logged["task/held_out_tasks/subtraction/exact_match"] == groups[
        "held_out_tasks/subtraction"]["exact_match"]
    assert logged["held_out_phrasings/exact_match"] == summary["held_out_phrasings/exact_match"]
    table = _table(run_dir, "eval/by_task")
    assert table["columns"] == ["split", "task", "n", "answer_loss", "answer_loss_before",
                                "exact_match", "exact_match_before"]
    assert len(table["data"]) == 7
    assert {row[0] for row in _table(run_dir, "eval/examples")["data"]} == set(groups)


def test_multi_turn_evaluation_by_turn_index(tiny_recipe, tmp_path) -> None:
    questions = write_jsonl(tmp_path / "questions.jsonl", [
        {"question_id": 1, "turns": ["What is 2 + 3?", "And 4 + 4?"]},  # no answers: prompts
        {"question_id": 2, "turns": ["Reverse the letters of 'kalo'."],
         "reference": ["olak"]}])
    val = tiny_recipe["data"]["validation"][0]["path"]
    tiny_recipe["eval"] = {"multi_turn": 20, "max_new_tokens": 6, "before_training": True,
                           "max_turns": 2,
                           "conversations": [{"path": val, "format": "messages"},
                                             {"path": str(questions), "format": "mt_bench"}]}
    tiny_recipe["wandb"] = {"mode": "offline", "log_examples": 0}
    summary = run_recipe(load_recipe(tiny_recipe))

    after, before = summary["multi_turn"], summary["multi_turn_before"]
    # the 12 validation conversations and the 2 questions (the first, prompt-only, answered
    # turn by turn with the model's own first answer)
    conversations = [json.loads(line)["messages"] for line in Path(val).read_text().splitlines()]
    turns = sum(sum(m["role"] == "user" for m in c) for c in conversations) + 3
    assert after["conversations"] == 14 and after["answers"] == turns == before["answers"]
    assert set(after["turns"]) <= {1, 2} and 1 in after["turns"]
    one = after["turns"][1]
    assert one["loss"] > 0 and abs(one["perplexity"] - 2.718281828 ** one["loss"]) < 1e-3 * one[
        "perplexity"] and one["tokens"] > 0
    assert 0 <= after["stop_rate"] <= 1 and 0 <= after["role_confusion_rate"] <= 1
    assert sum(after["role_confusion_kinds"].values()) == round(
        after["role_confusion_rate"] * after["answers"])
    asked = [e for e in after["examples"] if e["prompt"] == "And 4 + 4?"]
    assert len(asked) == 1 and asked[0]["turn"] == 2 and asked[0]["reference"] is None

    run_dir = Path(summary["wandb_dir"])
    logged = read_run(run_dir)["summary"]
    assert logged["multi_turn/stop_rate"] == after["stop_rate"]
    assert logged["multi_turn/turn_1/loss"] == one["loss"]
    assert logged["multi_turn_before/turn_1/perplexity"] == before["turns"][1]["perplexity"]
    table = _table(run_dir, "eval/turn_generations")
    assert table["columns"][:3] == ["conversation", "turn", "prompt"]
    assert len(table["data"]) == min(64, turns)
