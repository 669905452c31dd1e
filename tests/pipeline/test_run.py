"""Stages and rounds: the one-stage layout, merged stage keys, model hand-off, re-runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tempering.pipeline import run_pipeline
from tempering.recipe import RecipeError, Stage, load_recipe, stages_of, validate_components
from tests.conftest import REGISTRY


def test_a_recipe_without_stages_is_one_training_stage_of_its_top_level_keys(tiny_recipe) -> None:
    flat = load_recipe(tiny_recipe)
    explicit = load_recipe({**tiny_recipe, "stages": [{"kind": "train"}]})
    assert len(stages_of(flat)) == 1 and stages_of(flat) == stages_of(explicit)
    assert isinstance(stages_of(flat)[0], Stage) and stages_of(flat)[0].data == flat.data


def test_stage_keys_merge_over_the_top_level_ones(tiny_recipe) -> None:
    recipe = load_recipe({**tiny_recipe, "stages": [
        {"kind": "train", "optim": {"lr": 1e-4}, "masking": "last_assistant"},
        {"kind": "train", "trainer": {"max_steps": 2}},
    ]}, ["stages.1.objective.label_smoothing=0.1"])
    first, second = recipe.stages
    assert (first.optim.lr, first.optim.warmup_steps) == (1e-4, 2)  # the top-level warmup stays
    assert first.masking.name == "last_assistant" and second.masking.name == "all_assistant"
    assert second.trainer["max_steps"] == 2 and second.trainer["accelerator"] == "cpu"
    assert second.objective.options == {"label_smoothing": 0.1}


@pytest.mark.parametrize(("stages", "message"), [
    ([{"kind": "trian"}],
     "stages[0].kind: 'trian' is not one of train, generate, score, filter, eval, "
     "self_instruct, instances, evolve; did you mean 'train'"),
    ([{"kind": "train"}, {"kind": "train", "optim": {"lrr": 1}}],
     "stages[1].optim.lrr: unknown key; did you mean 'lr'"),
    ([{"kind": "train", "trainer": {"max_step": 1}}],
     "stages[0].trainer.max_step: not a lightning.Trainer argument"),
    (["train"], "stages[0]: expected a mapping with a kind"),
])
def test_a_mistake_in_a_stage_names_the_stage(tiny_recipe, stages, message) -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe({**tiny_recipe, "stages": stages})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_components_are_checked_in_every_stage(tiny_recipe) -> None:
    recipe = load_recipe({**tiny_recipe, "stages": [{"kind": "train"},
                                                   {"kind": "train", "masking": "lst"}]})
    with pytest.raises(RecipeError, match=r"^stages\[1\]\.masking: unknown masking 'lst'"):
        validate_components(recipe, REGISTRY)


def test_a_stage_that_hands_its_model_on_must_save_it(tiny_recipe) -> None:
    tiny_recipe["train"]["save_final"] = False
    with pytest.raises(RecipeError, match=r"stages\[0\]\.train\.save_final: false"):
        run_pipeline(load_recipe({**tiny_recipe, "rounds": 2}))


def test_rounds_train_on_from_the_previous_rounds_model_and_a_rerun_skips_finished_stages(
        tiny_recipe, capsys) -> None:
    tiny_recipe["eval"]["before_training"] = True
    tiny_recipe["trainer"]["max_steps"] = 3
    recipe = load_recipe({**tiny_recipe, "rounds": 2})
    summary = run_pipeline(recipe)
    first, second = summary["stages"]
    base = Path(tiny_recipe["train"]["output_dir"])
    assert (first["output_dir"], second["output_dir"]) == (str(base / "round-1" / "0-train"),
                                                           str(base / "round-2" / "0-train"))
    round2 = json.loads((base / "round-2" / "0-train" / "summary.json").read_text())
    # round 2 starts from round 1's final weights: its held-out loss before is round 1's after
    assert round2["val_loss_before"] == pytest.approx(first["val_loss"], rel=1e-5)
    assert round2["val_loss"] < round2["val_loss_before"]
    stage_recipe = json.loads((base / "round-2" / "0-train" / "stage_recipe.json").read_text())
    assert stage_recipe["model"]["name_or_path"] == first["final_model"]
    assert json.loads((base / "pipeline.json").read_text()) == summary["stages"]
    capsys.readouterr()
    again = run_pipeline(recipe)
    assert again["stages"] == summary["stages"]
    assert capsys.readouterr().err.count("finished earlier") == 2
    changed = load_recipe({**tiny_recipe, "rounds": 2}, ["optim.lr=0.002"])
    with pytest.raises(RecipeError, match="holds a stage of another recipe"):
        run_pipeline(changed)
