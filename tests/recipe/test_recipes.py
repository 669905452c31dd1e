"""Recipes: every bundled one validates; mistakes are one line with the key path and a hint."""

from __future__ import annotations

import pytest

from tempering.plugin_manager import build_plugin_manager, build_registry
from tempering.recipe import RecipeError, bundled_recipes, load_recipe, validate_components
from tempering.train.driver import build_strategy, trainer_arguments

BUNDLED = sorted(bundled_recipes())


def test_the_bundled_recipes_include_the_quickstart_and_real_model_recipes():
    assert {"sft-quickstart", "sft-qwen2.5-0.5b", "sft-llama3-8b-fsdp"} <= set(BUNDLED)


@pytest.mark.parametrize("name", BUNDLED)
def test_every_bundled_recipe_validates(name, tmp_path):
    recipe = load_recipe(name)
    path = bundled_recipes()[name]
    text = path.read_text()
    assert text.startswith("# "), "a recipe opens with a comment header"
    assert f"tempering run {name}" in text, "the header gives the command that runs it"
    registry = build_registry(build_plugin_manager(recipe.plugins))
    validate_components(recipe, registry)
    from tempering.data.mixture import check_mixture

    for stage in recipe.stages or [recipe]:
        if stage.data.mixture.tasks:
            check_mixture(stage.data.mixture, registry)
    args = trainer_arguments(recipe, tmp_path)
    if isinstance(recipe.trainer.get("strategy"), dict):
        assert type(args["strategy"]).__name__.endswith("Strategy")


def test_fsdp_strategy_wraps_the_named_layer_classes():
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    strategy = build_strategy({
        "name": "fsdp",
        "auto_wrap_policy": ["transformers.models.llama.modeling_llama.LlamaDecoderLayer"]})
    assert LlamaDecoderLayer in strategy.kwargs["auto_wrap_policy"]._module_classes
    with pytest.raises(RecipeError, match="cannot import 'transformers.NoSuchLayer'"):
        build_strategy({"name": "fsdp", "auto_wrap_policy": ["transformers.NoSuchLayer"]})


BASE = {"data": {"train": [{"path": "x.jsonl"}]}}


@pytest.mark.parametrize(("raw", "overrides", "message"), [
    ({**BASE, "chat_templte": "llama3"}, [], "chat_templte: unknown key; did you mean 'chat_template'"),
    ({"data": {"train": [{"path": "x", "fromat": "alpaca"}]}}, [],
     "data.train[0].fromat: unknown key; did you mean 'format'"),
    (BASE, ["data.max_length=long"], "data.max_length: expected int, got 'long'"),
    (BASE, ["data.packing=[1]"], "data.packing: expected bool"),
    (BASE, ["trainer.max_step=5"], "trainer.max_step: not a lightning.Trainer argument; did you "
                                   "mean 'max_steps'"),
    (BASE, ["model=3"], "model: expected a mapping"),
    (BASE, ["nonsense"], "not of the form key.path=value"),
    ({"name": "x"}, [], "data.train: at least one training source"),
])
def test_recipe_mistakes_are_one_line_with_the_key_path(raw, overrides, message):
    with pytest.raises(RecipeError) as err:
        load_recipe(raw, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("masking", "last_assistnt", "masking: unknown masking 'last_assistnt'; did you mean "
                                 "'last_assistant'"),
    ("chat_template", "lama3", "chat_template: unknown chat_template 'lama3'; did you mean "
                               "'llama3'"),
    ("data.overflow", "trim", "data.overflow: unknown overflow_policy 'trim'; valid names: drop, "
                              "drop_oldest_turns, split_per_turn, truncate_turns"),
    ("data.train.0.format", "alpacca", "data.train[0].format: unknown record_format 'alpacca'; "
                                       "did you mean 'alpaca'"),
    ("eval.metrics", "[exact_mach]", "eval.metrics[0]: unknown metric 'exact_mach'; did you "
                                     "mean 'exact_match'"),
])
def test_unknown_components_suggest_the_closest_registered_name(registry, key, value, message):
    recipe = load_recipe(BASE, [f"{key}={value}"])
    with pytest.raises(RecipeError) as err:
        validate_components(recipe, registry)
    assert str(err.value).startswith(message), str(err.value)


def test_objective_shorthand_and_options_beside_the_name():
    assert load_recipe({**BASE, "objective": "cross_entropy"}).objective.name == "cross_entropy"
    recipe = load_recipe({**BASE, "objective": {"name": "cross_entropy", "label_smoothing": 0.1}})
    assert recipe.objective.options == {"label_smoothing": 0.1}


def test_overrides_parse_yaml_values_and_reach_lists():
    recipe = load_recipe("sft-quickstart", ["trainer.max_steps=7", "data.train.0.weight=2.5",
                                            "optim.lr=1e-4", "wandb.tags=[a, b]"])
    assert recipe.trainer["max_steps"] == 7 and recipe.data.train[0].weight == 2.5
    assert recipe.optim.lr == 1e-4 and recipe.wandb.tags == ["a", "b"]


def test_a_missing_recipe_suggests_bundled_names():
    with pytest.raises(RecipeError, match="did you mean 'sft-quickstart'"):
        load_recipe("sft-quikstart")


TINY_TEACHER = ["teacher.name_or_path=bundled:tiny-llama", "teacher.init=random",
                "teacher.dtype=float32"]


@pytest.mark.parametrize(("name", "extra"), [
    ("sft-qwen2.5-0.5b", []), ("sft-llama3-8b-fsdp", []), ("sft-llama3-8b-zero3", []),
    ("distill-llama3-8b-to-1b-fsdp", TINY_TEACHER),
    ("distill-llama3-8b-to-1b-zero2", TINY_TEACHER),
    ("distill-qwen2.5-1.5b-to-0.5b-ddp", TINY_TEACHER)])
def test_real_model_recipes_run_on_cpu_with_the_tiny_model_swapped_in(name, extra, tmp_path):
    """Only the models, data location and hardware change; everything else runs as written."""
    from tempering.train.driver import run_recipe

    overrides = [*extra,
        "model.name_or_path=bundled:tiny-llama", "model.init=random", "model.dtype=float32",
        "data.train=[{path: bundled:data/tasks_train.jsonl, format: messages, max_records: 120}]",
        "data.validation=[{path: bundled:data/tasks_eval.jsonl, format: messages, "
        "max_records: 12}]",
        "data.max_length=256", "data.num_proc=1", f"data.cache_dir={tmp_path / 'cache'}",
        "trainer.accelerator=cpu", "trainer.devices=1", "trainer.strategy=auto",
        "trainer.precision=32", "trainer.max_steps=2", "trainer.val_check_interval=2",
        "trainer.accumulate_grad_batches=2", "trainer.enable_progress_bar=false",
        "wandb.mode=disabled", "eval.generate_samples=1", "eval.max_new_tokens=4",
        "train.checkpoint_every_n_steps=null", f"train.output_dir={tmp_path / 'run'}",
    ]
    summary = run_recipe(load_recipe(name, overrides))
    assert summary["global_step"] == 2 and summary["val_loss"] > 0
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()


@pytest.mark.parametrize(("name", "rows"), [
    ("multiturn-quickstart", ["turn 1 loss", "stopped at end-of-turn", "role confusion"]),
    ("flan-mixture-quickstart", ["held out tasks", "held out phrasings", "answer loss"]),
])
def test_the_new_quickstarts_run_shortened(name, rows, tmp_path, capsys):
    from tempering.cli import main

    small = {"multiturn-quickstart": ["eval.multi_turn=6", "eval.generate_samples=4"],
             "flan-mixture-quickstart": ["eval.generate_samples=1", "data.mixture.examples=300",
                                         "data.mixture.eval_examples=2"]}[name]
    assert main(["run", name, "trainer.max_steps=3", "wandb.mode=disabled",
                 "eval.max_new_tokens=4", f"train.output_dir={tmp_path}", *small]) == 0
    table = capsys.readouterr().out
    assert all(row in table for row in rows), table


def test_the_lora_quickstart_runs_shortened(tmp_path, capsys):
    pytest.importorskip("peft")
    import json
    from pathlib import Path

    from tempering.cli import main

    assert main(["run", "lora-quickstart", "trainer.max_steps=3", "stages.2.trainer.max_steps=3",
                 "eval.max_prompts=4", "wandb.mode=disabled", f"train.output_dir={tmp_path}"]) == 0
    assert "adapters-eval" in capsys.readouterr().out
    stages = json.loads((tmp_path / "pipeline.json").read_text())
    adapters = json.loads((Path(stages[2]["output_dir"]) / "summary.json").read_text())
    assert adapters["trainable_parameters"] < adapters["total_parameters"] / 5
    assert (Path(stages[2]["final_model"]) / "adapter" / "adapter_model.safetensors").is_file()
