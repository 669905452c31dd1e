"""Running a recipe's stages, round after round.

A recipe without ``stages`` is one ``train`` stage made of its top-level sections (the layout
every SFT recipe has), run exactly as before. With ``stages``, each stage's sections are the
top-level ones with the stage's own keys merged over them; each stage runs with a recipe that
holds only its own sections. A training stage's final model is the policy of every later stage
and round. Each stage of a multi-stage or multi-round recipe writes into its own folder of the
run directory (``round-1/0-train``); a stage whose folder already holds a finished run is
skipped when the recipe is run again, so an interrupted pipeline continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tempering.recipe import Recipe, RecipeError, TrainStage, stages_of, validate_components

__all__ = ["STAGE_RUNNERS", "run_pipeline", "stage_recipe"]


def _run_train(recipe: Recipe, callbacks: list[Any] | None) -> dict[str, Any]:
    from tempering.train.driver import run_recipe

    return run_recipe(recipe, callbacks)


# Stage kind -> runner(recipe of that stage, extra callbacks) -> the stage's summary.
STAGE_RUNNERS: dict[str, Callable[[Recipe, list[Any] | None], dict[str, Any]]] = {
    "train": _run_train,
}


def stage_recipe(recipe: Recipe, stage: TrainStage, **changes: Any) -> Recipe:
    """The recipe one stage runs with: the shared sections and the stage's own, in the
    one-stage layout (no ``stages``, one round)."""
    own = {f.name: getattr(stage, f.name) for f in dataclasses.fields(TrainStage)}
    return dataclasses.replace(recipe, **{**own, **changes, "stages": [], "rounds": 1})


_STAGE_RECIPE = "stage_recipe.json"


def _comparable(view: Recipe) -> Any:
    """The stage's recipe as data, without the keys that say how to (re)start it."""
    from tempering.recipe import to_dict

    data = json.loads(json.dumps(to_dict(view), default=str))
    for key in ("resume_from", "overwrite"):
        data["train"].pop(key, None)
    return data


def _finished(folder: Path, view: Recipe) -> dict[str, Any] | None:
    """The summary of this stage's finished run of the same recipe in ``folder``, if any."""
    summary, recorded = folder / "summary.json", folder / _STAGE_RECIPE
    if not summary.exists() or not recorded.exists() or view.train.overwrite:
        return None
    done = json.loads(summary.read_text())
    if not done.get("final_model") or done.get("interrupted"):
        return None
    if json.loads(recorded.read_text()) != _comparable(view):
        raise RecipeError(f"{folder} holds a finished stage of another recipe: start over with "
                          "train.overwrite=true (deletes it) or set another train.output_dir")
    return done


def _record(folder: Path, view: Recipe) -> None:
    (folder / _STAGE_RECIPE).write_text(json.dumps(_comparable(view), indent=2) + "\n")


def _check_handoff(recipe: Recipe, stages: list[TrainStage]) -> None:
    """Every training stage that hands its model on saves it."""
    steps = [(r, i) for r in range(recipe.rounds) for i in range(len(stages))]
    for r, i in steps[:-1]:
        if stages[i].kind == "train" and not stages[i].train.save_final:
            raise RecipeError(f"stages[{i}].train.save_final: false, but round {r + 1}'s later "
                              "stages train on this stage's model; it must be saved")


def run_pipeline(recipe: Recipe, callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Run every stage of every round; returns the last stage's summary with ``stages``, the
    summaries of all of them (also written to ``pipeline.json`` in the run directory)."""
    if not recipe.stages and recipe.rounds == 1:  # one training run, as it always was
        return STAGE_RUNNERS["train"](recipe, callbacks)
    from tempering.plugin_manager import build_plugin_manager, build_registry

    # Every stage's components are checked before the first one runs, named by their stage.
    validate_components(recipe, build_registry(build_plugin_manager(recipe.plugins)))
    stages = stages_of(recipe)
    _check_handoff(recipe, stages)
    base = Path(stages[0].train.output_dir.format(name=recipe.name))
    model, done = recipe.model, []
    summary: dict[str, Any] = {}
    for r in range(1, recipe.rounds + 1):
        for i, stage in enumerate(stages):
            label = f"round-{r}/{i}-{stage.kind}"
            folder = base / f"round-{r}" / f"{i}-{stage.kind}"
            resume = stage.train.resume_from
            if resume == "last" and not (folder / "checkpoints" / "last.ckpt").exists():
                resume = None  # a stage that never started starts; the interrupted one resumes
            view = stage_recipe(recipe, stage, model=model, name=f"{recipe.name}-r{r}-{i}",
                                train=dataclasses.replace(stage.train, output_dir=str(folder),
                                                          resume_from=resume))
            finished = _finished(folder, view)
            if finished is not None:
                print(f"tempering: {label} finished earlier ({folder}); skipping it",
                      file=sys.stderr)
                summary = finished
            else:
                print(f"tempering: stage {label}", file=sys.stderr)
                summary = STAGE_RUNNERS[stage.kind](view, callbacks)
                _record(folder, view)
            done.append({"round": r, "stage": i, "kind": stage.kind, "output_dir": str(folder),
                         **{k: summary.get(k) for k in ("global_step", "val_loss",
                                                         "final_model")}})
            if stage.kind == "train" and summary.get("final_model"):
                model = dataclasses.replace(model, name_or_path=summary["final_model"],
                                            init="pretrained", tokenizer=None)
            base.mkdir(parents=True, exist_ok=True)
            (base / "pipeline.json").write_text(json.dumps(done, indent=2) + "\n")
    return {**summary, "stages": done}
