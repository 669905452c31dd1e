"""Task mixtures (``data.mixture``): mixing rates, the draw, held-out tasks and phrasings, few-shot
forms, datasets as tasks, errors, and per-task evaluation."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from typing import Any

import pytest

from tempering.data.mixture import build_mixture, check_mixture, compose, mixture_rates
from tempering.data.sources import BadRecordLog, Conversation, DataError
from tempering.generate.base import Completion
from tempering.plugin_manager import build_plugin_manager, build_registry
from tempering.recipe import RecipeError, load_recipe
from tests.data import mixture_plugin

REGISTRY = build_registry(build_plugin_manager([mixture_plugin], entry_points=False))


def _mixture(**mixture: Any) -> Any:
    return load_recipe({"data": {"mixture": mixture}, "wandb": {"mode": "disabled"}}).data.mixture


def _build(mixture: Any, on_bad_record: str = "error", log: BadRecordLog | None = None) -> Any:
    return build_mixture(mixture, REGISTRY, seed=0, on_bad_record=on_bad_record,
                         log=log if log is not None else BadRecordLog())


def test_rates_by_weight_capped_size_and_temperature() -> None:
    sizes, weights = [100, 1000, 10000], [1.0, 1.0, 2.0]
    assert mixture_rates(sizes, weights, "explicit", None, 1.0) == [0.25, 0.25, 0.5]
    assert mixture_rates(sizes, weights, "examples_proportional", None, 1.0) == pytest.approx(
        [100 / 11100, 1000 / 11100, 10000 / 11100])
    # FLAN's K: a task counts as at most K records
    assert mixture_rates(sizes, weights, "examples_proportional", 2000, 1.0) == pytest.approx(
        [100 / 3100, 1000 / 3100, 2000 / 3100])
    t2 = [math.sqrt(n) for n in (100, 1000, 2000)]
    assert mixture_rates(sizes, weights, "temperature", 2000, 2.0) == pytest.approx(
        [x / sum(t2) for x in t2])
    assert mixture_rates(sizes, weights, "temperature", 2000, 1.0) == pytest.approx(
        mixture_rates(sizes, weights, "examples_proportional", 2000, 1.0))
    assert mixture_rates(sizes, weights, "temperature", None, 1e6) == pytest.approx([1 / 3] * 3, abs=1e-5)
    with pytest.raises(RecipeError, match="every task has weight 0"):
        mixture_rates(sizes, [0, 0, 0], "explicit", None, 1.0)


@pytest.mark.parametrize(("sampling", "expected"), [
    ("examples_proportional", [200 / 2700, 1000 / 2700, 1500 / 2700]),
    ("explicit", [0.5, 0.25, 0.25]),
    ("temperature", [math.sqrt(n) / sum(math.sqrt(m) for m in (200, 1000, 1500))
                     for n in (200, 1000, 1500)]),
])
def test_drawn_proportions_are_the_rates_within_sampling_error(sampling, expected) -> None:
    n = 6000
    mixture = _mixture(sampling=sampling, cap=1500, temperature=2.0, examples=n, eval_examples=0,
                       tasks=[{"task": "numbers", "name": "a", "records": 200, "weight": 2},
                              {"task": "numbers", "name": "b", "records": 1000},
                              {"task": "numbers", "name": "c", "records": 3000}])
    data = _build(mixture)
    counts = Counter(c.tags["task"] for c in data.train)
    assert sum(counts.values()) == n
    for name, p in zip("abc", expected, strict=True):
        sd = math.sqrt(n * p * (1 - p))
        assert abs(counts[name] - n * p) < 4 * sd, (name, counts[name], n * p)
        assert data.report["tasks"][name]["rate"] == pytest.approx(p, abs=1e-6)
        assert data.report["tasks"][name]["examples"] == counts[name]
    # the small task's records repeat: epochs say how often
    a = data.report["tasks"]["a"]
    assert a["records"] == 200 and a["epochs"] == pytest.approx(counts["a"] / 200, abs=1e-3)


def test_held_out_phrasings_and_tasks_are_never_trained() -> None:
    mixture = _mixture(examples=3000, eval_examples=20, held_out_phrasings=[2],
                       tasks=[{"task": "numbers", "records": 400}, {"task": "small", "records": 250}],
                       held_out_tasks=[{"task": {"name": "numbers", "width": 3}, "name": "unseen"}])
    data = _build(mixture)
    prompts = Counter(c.messages[0]["content"].split(" ")[0] for c in data.train)
    assert set(prompts) == {"Echo", "Say"}  # phrasings 0 and 1 only
    assert {c.tags["task"] for c in data.train} == {"numbers", "small"}
    splits = Counter((c.tags["split"], c.tags["task"]) for c in data.evals)
    assert splits == {("seen_phrasings", "numbers"): 20, ("held_out_phrasings", "numbers"): 20,
                      ("seen_phrasings", "small"): 20, ("held_out_phrasings", "small"): 20,
                      ("held_out_tasks", "unseen"): 20}
    held_p = [c for c in data.evals if c.tags["split"] == "held_out_phrasings"]
    assert all(c.messages[0]["content"].startswith("What was") for c in held_p)
    # evaluation never sees a trained record, even where the input space is small
    trained = {(c.tags["task"], c.messages[-1]["content"]) for c in data.train}
    assert data.report["tasks"]["small"]["held_out"] == 20
    for c in data.evals:
        if c.tags["split"] != "held_out_tasks":
            assert (c.tags["task"], c.messages[-1]["content"]) not in trained
    unseen = [c for c in data.evals if c.tags["task"] == "unseen"]
    assert all(len(c.messages[-1]["content"]) <= 3 for c in unseen)  # its option was used
    assert data.report["eval_conversations"] == {"seen_phrasings": 40, "held_out_phrasings": 40,
                                                 "held_out_tasks": 20}


def test_few_shot_examples_use_one_phrasing_and_other_records() -> None:
    mixture = _mixture(examples=2000, eval_examples=5, fewshot_share=0.3, fewshot_k=2,
                       eval_shots=[0, 2], tasks=[{"task": "numbers", "records": 300}])
    data = _build(mixture)
    shots = [c for c in data.train if "\n\n" in c.messages[0]["content"]]
    assert abs(len(shots) - 600) < 4 * math.sqrt(2000 * 0.3 * 0.7)
    for c in shots:
        blocks = c.messages[0]["content"].split("\n\n")
        assert len(blocks) == 3
        starts = {b.split(" ")[0] for b in blocks}
        assert len(starts) == 1  # the exemplars are in the query's phrasing
        answers = [b.split("\n")[1] for b in blocks[:2]]
        assert c.messages[1]["content"] not in answers and answers[0] != answers[1]
    two = [c for c in data.evals if c.tags["shots"] == 2]
    assert len(two) == 5 and all(c.messages[0]["content"].count("\n\n") == 2 for c in two)
    formatter = REGISTRY.get("task_formatter", "echo")
    assert compose(formatter, {"x": "7"}, 1, [{"x": "1"}, {"x": "2"}], {}) == (
        "Say 1 back.\n1\n\nSay 2 back.\n2\n\nSay 7 back.", "7")


def test_the_draw_is_seeded_and_origins_name_the_record() -> None:
    mixture = _mixture(examples=50, eval_examples=2, tasks=[{"task": "numbers"}])
    first, second = _build(mixture), _build(mixture)
    assert [c.messages for c in first.train] == [c.messages for c in second.train]
    assert re.fullmatch(r"task:numbers#\d+ \(numbers, phrasing \d\)", first.train[0].origin)
    other = build_mixture(mixture, REGISTRY, seed=1, on_bad_record="error", log=BadRecordLog())
    assert [c.messages for c in other.train] != [c.messages for c in first.train]


def test_a_dataset_is_a_task_with_mapped_fields_and_named_bad_records(tmp_path) -> None:
    path = tmp_path / "sst.jsonl"
    rows = [{"sentence": str(i), "label": i % 2} for i in range(30)] + [{"label": 1}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n"
                    + json.dumps(rows[0]) + "\n")  # a malformed line; a repeated record
    entry = {"path": str(path), "formatter": {"name": "echo", "upper": True},
             "fields": {"x": "sentence"}}
    mixture = _mixture(examples=100, eval_examples=5, tasks=[entry])
    with pytest.raises(DataError, match=r"sst\.jsonl:31, field x \(data\.mixture\.tasks\[0\], "
                                        r"formatter 'echo'\): missing field 'x'"):
        _build(mixture)
    log = BadRecordLog()
    data = _build(mixture, "skip", log)
    assert log.counts == {"missing_field": 1, "malformed_json": 1}
    report = data.report["tasks"]["sst"]
    assert report["records"] == 26 and report["examples"] == 100
    held = [c.messages[-1]["content"] for c in data.evals]
    # the repeated record is never both trained and held out
    assert 4 <= len(held) == report["held_out"] <= 5
    assert not set(held) & {c.messages[-1]["content"] for c in data.train}


@pytest.mark.parametrize(("mixture", "message"), [
    ({"tasks": [{"task": "numbers", "path": "x.jsonl"}]},
     r"data\.mixture\.tasks\[0\]: give either `task`.*not both"),
    ({"tasks": [{"weight": 2}]}, r"data\.mixture\.tasks\[0\]: give either .*not neither"),
    ({"tasks": [{"path": "x.jsonl"}]},
     r"data\.mixture\.tasks\[0\]\.formatter: a dataset task needs a formatter \(one of .*echo"),
    ({"tasks": [{"task": "numbers"}, {"task": "numbers"}]},
     r"data\.mixture\.tasks\[1\]\.name: 'numbers' is also the name of data\.mixture\.tasks\[0\]"),
    ({"tasks": [{"task": "numbers"}], "held_out_phrasings": [3]},
     r"held_out_phrasings: \[3\] out of range .*phrasings 0\.\.2"),
    ({"tasks": [{"task": "numbers"}], "held_out_phrasings": [0, 1, 2]},
     r"no phrasing of formatter 'echo' .* would be left to train on"),
])
def test_mixture_mistakes_are_named(mixture, message) -> None:
    with pytest.raises(RecipeError, match=message):
        check_mixture(_mixture(**mixture), REGISTRY)


def test_unknown_task_and_formatter_options_fail_validation() -> None:
    from tempering.recipe import validate_components

    def recipe(task: dict) -> Any:
        return load_recipe({"data": {"mixture": {"tasks": [task]}}, "wandb": {"mode": "disabled"}})

    with pytest.raises(RecipeError, match=r"data\.mixture\.tasks\[0\]\.task\.depth: not an "
                                          r"option of task 'numbers'.*width"):
        validate_components(recipe({"task": {"name": "numbers", "depth": 2}}), REGISTRY)
    with pytest.raises(RecipeError, match=r"data\.mixture\.tasks\[0\]\.formatter: .*'ech'"):
        validate_components(recipe({"task": "numbers", "formatter": "ech"}), REGISTRY)
    validate_components(recipe({"task": {"name": "numbers", "width": 2}}), REGISTRY)


class _Answers:
    """Answers each prompt with what ``answer`` says (a scripted generator)."""

    def __init__(self, answer) -> None:
        self.answer = answer

    def generate(self, prompts, params):
        return [[Completion(self.answer(p[-1]["content"]), 1, "stop")] for p in prompts]


def test_evaluation_scores_each_task_and_split() -> None:
    from tempering.train.evaluation import evaluate_answers

    def conv(task: str, split: str, answer: str, shots: int = 0) -> Conversation:
        return Conversation([{"role": "user", "content": f"{task} {answer}"},
                             {"role": "assistant", "content": answer}], "x",
                            {"task": task, "split": split, "shots": shots})

    items = ([conv("a", "seen_phrasings", str(i)) for i in range(4)]
             + [conv("b", "seen_phrasings", str(i)) for i in range(4)]
             + [conv("a", "held_out_phrasings", str(i)) for i in range(4)]
             + [conv("u", "held_out_tasks", str(i), shots=2) for i in range(4)])
    # right on task a and on even numbers elsewhere
    generator = _Answers(lambda q: q.split()[1] if q.startswith("a") or int(q.split()[1]) % 2
                         == 0 else "no")
    exact = (REGISTRY.get("metric", "exact_match"), {})
    result = evaluate_answers(generator, items, [exact], params=None, limit=3)
    assert result["samples"] == 12  # three of each group
    assert result["by_task"] == {
        "seen_phrasings/a": {"exact_match": 1.0, "n": 3},
        "seen_phrasings/b": {"exact_match": pytest.approx(2 / 3), "n": 3},
        "held_out_phrasings/a": {"exact_match": 1.0, "n": 3},
        "held_out_tasks@2shot/u": {"exact_match": pytest.approx(2 / 3), "n": 3}}
    assert result["by_split"]["seen_phrasings"] == {"exact_match": pytest.approx(5 / 6),
                                                    "tasks": 2}
    assert result["scores"]["exact_match"] == pytest.approx(10 / 12)
    assert {e["group"] for e in result["examples"]} == set(result["by_task"])
