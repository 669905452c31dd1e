"""Running a recipe's stages, round after round.

A recipe without ``stages`` is one ``train`` stage made of its top-level sections (the layout
every SFT recipe has), run exactly as before. With ``stages``, each stage's sections are the
top-level ones with the stage's own keys merged over them; each stage runs with a recipe that
holds only its own sections. A training stage's final model (with the chat template it was
trained with) is what later stages and rounds start from (``model_from``). Each stage writes
into its own folder of the run directory (``round-1/0-train``); a stage whose folder holds a
finished run of the same recipe is skipped when the recipe is run again, and an interrupted
one continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tempering.console import rounds_markdown
from tempering.pipeline.generate import StageContext
from tempering.recipe import (
    STAGE_PATH,
    Recipe,
    RecipeError,
    Stage,
    stage_ids,
    stages_of,
    validate_components,
)

__all__ = ["STAGE_RUNNERS", "run_pipeline", "stage_folder", "stage_recipe", "rounds_table"]


def _run_train(view: Recipe, ctx: StageContext, pm: Any, registry: Any) -> dict[str, Any]:
    from tempering.train.driver import run_recipe

    return run_recipe(view, list(ctx.callbacks))


def _run_generate(view: Recipe, ctx: StageContext, pm: Any, registry: Any) -> dict[str, Any]:
    from tempering.pipeline.generate import run_generate

    return run_generate(view, ctx, pm, registry)


def _run_score(view: Recipe, ctx: StageContext, pm: Any, registry: Any) -> dict[str, Any]:
    from tempering.pipeline.score import run_score

    return run_score(view, ctx, pm, registry)


def _run_filter(view: Recipe, ctx: StageContext, pm: Any, registry: Any) -> dict[str, Any]:
    from tempering.pipeline.score import run_filter

    return run_filter(view, ctx, pm, registry)


def _run_eval(view: Recipe, ctx: StageContext, pm: Any, registry: Any) -> dict[str, Any]:
    from tempering.pipeline.evaluate import run_eval

    return run_eval(view, ctx, pm, registry)


def _run_self_instruct(view: Recipe, ctx: StageContext, pm: Any, registry: Any
                       ) -> dict[str, Any]:
    from tempering.pipeline.self_instruct import run_self_instruct

    return run_self_instruct(view, ctx, pm, registry)


def _run_instances(view: Recipe, ctx: StageContext, pm: Any, registry: Any) -> dict[str, Any]:
    from tempering.pipeline.self_instruct import run_instances

    return run_instances(view, ctx, pm, registry)


def _run_evolve(view: Recipe, ctx: StageContext, pm: Any, registry: Any) -> dict[str, Any]:
    from tempering.pipeline.evolve import run_evolve

    return run_evolve(view, ctx, pm, registry)


Runner = Callable[[Recipe, StageContext, Any, Any], dict[str, Any]]
# Stage kind -> runner(recipe of that stage, where it runs, plugin manager, registry) -> summary.
STAGE_RUNNERS: dict[str, Runner] = {
    "train": _run_train, "generate": _run_generate, "score": _run_score,
    "filter": _run_filter, "eval": _run_eval, "self_instruct": _run_self_instruct,
    "instances": _run_instances, "evolve": _run_evolve,
}


def stage_recipe(recipe: Recipe, stage: Stage, **changes: Any) -> Recipe:
    """The recipe one stage runs with: the shared sections and the stage's own, in the
    one-stage layout (no ``stages``, one round)."""
    own = {f.name: getattr(stage, f.name) for f in dataclasses.fields(Stage)}
    return dataclasses.replace(recipe, **{**own, **changes, "stages": [], "rounds": 1})


_STAGE_RECIPE = "stage_recipe.json"


def _comparable(view: Recipe) -> Any:
    """The stage's recipe as data, without the keys that say how to (re)start it."""
    from tempering.recipe import to_dict

    data = json.loads(json.dumps(to_dict(view), default=str))
    for key in ("resume_from", "overwrite"):
        data["train"].pop(key, None)
    return data


def _is_done(kind: str, summary: dict[str, Any]) -> bool:
    if kind == "train":
        return bool(summary.get("final_model")) and not summary.get("interrupted")
    return bool(summary.get("complete"))


def _earlier_run(folder: Path, view: Recipe, kind: str) -> dict[str, Any] | None:
    """The summary of this stage's finished run of the same recipe in ``folder``, if any; a
    folder that holds (part of) a run of another recipe is refused."""
    summary, recorded = folder / "summary.json", folder / _STAGE_RECIPE
    if view.train.overwrite:
        if kind != "train":  # a training run clears its own folder
            shutil.rmtree(folder, ignore_errors=True)
        return None
    if not recorded.exists():
        return None
    if json.loads(recorded.read_text()) != _comparable(view):
        raise RecipeError(f"{folder} holds a stage of another recipe: start over with "
                          "train.overwrite=true (deletes it) or set another train.output_dir")
    if summary.exists() and _is_done(kind, done := json.loads(summary.read_text())):
        return done
    return None


def _record(folder: Path, view: Recipe) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / _STAGE_RECIPE).write_text(json.dumps(_comparable(view), indent=2) + "\n")


def _check_handoff(recipe: Recipe, stages: list[Stage]) -> None:
    """Every training stage whose model a later stage uses saves it."""
    steps = [(r, i) for r in range(1, recipe.rounds + 1) for i, s in enumerate(stages)
             if not s.in_rounds or r in s.in_rounds]
    for r, i in steps[:-1]:
        if stages[i].kind == "train" and not stages[i].train.save_final:
            raise RecipeError(f"stages[{i}].train.save_final: false, but round {r}'s later "
                              "stages use this stage's model; it must be saved")


@dataclasses.dataclass
class _Handed:
    """A trained model and the template it was trained with."""

    model: Any
    template: dict[str, Any]


_TEMPLATE_KEYS = ("chat_template", "template_kwargs", "allow_split_markers")


class _Pipeline:
    """The state passed from stage to stage: models trained, samples written."""

    def __init__(self, recipe: Recipe, base: Path) -> None:
        self.recipe, self.base = recipe, base
        self.latest: _Handed | None = None
        self.trained: dict[str, _Handed] = {}
        self.outputs: dict[str, Path] = {}
        self.previous: str | None = None

    def model_of(self, stage: Stage, label: str) -> dict[str, Any]:
        """The ``model`` (and template keys) of a stage's recipe."""
        handed = (None if stage.model_from == "recipe" else self.latest
                  if stage.model_from == "latest" else self.trained.get(stage.model_from))
        if stage.model_from not in ("recipe", "latest") and handed is None:
            raise RecipeError(f"{label}: model_from {stage.model_from!r}: that stage has not "
                              "run yet (in_rounds?)")
        if handed is None:
            return {"model": stage.model}
        # The handed model is which weights this stage starts from; how it trains them
        # (adapters, dtype, checkpointing, attention) is the stage's own `model` section.
        model = dataclasses.replace(stage.model, name_or_path=handed.model.name_or_path,
                                    init="pretrained", tokenizer=None, revision=None,
                                    config_overrides={})
        return {"model": model, **handed.template}

    def teacher_of(self, stage: Stage, label: str, registry: Any) -> Any:
        """The recipe's teacher for a training stage whose objective uses one (None for the
        others); ``stage:<id>`` is that training stage's latest final model."""
        teacher = self.recipe.teacher
        needs = stage.kind == "train" and registry.get("objective", stage.objective.name
                                                       ).needs_teacher
        if teacher is None or not needs:
            return None
        if not teacher.name_or_path.startswith(STAGE_PATH):
            return teacher
        source = teacher.name_or_path[len(STAGE_PATH):]
        if source not in self.trained:
            raise RecipeError(f"{label}: teacher {teacher.name_or_path}: that stage has not "
                              "run yet")
        return dataclasses.replace(self.trained[source].model, dtype=teacher.dtype,
                                   attn_implementation=teacher.attn_implementation)

    def data_of(self, stage: Stage, label: str) -> Any:
        """The stage's data sections with ``stage:<id>`` paths made the files they name."""
        def resolve(source: Any) -> Any:
            if not source.path.startswith(STAGE_PATH):
                return source
            target = source.path[len(STAGE_PATH):]
            if target not in self.outputs:
                raise RecipeError(f"{label}: {source.path}: that stage has not run yet")
            return dataclasses.replace(source, path=str(self.outputs[target]))

        return dataclasses.replace(stage.data, train=[resolve(s) for s in stage.data.train],
                                   validation=[resolve(s) for s in stage.data.validation])

    def input_of(self, stage: Stage) -> Path | None:
        name = stage.input or self.previous
        return self.outputs.get(name) if name else None

    def after(self, stage: Stage, sid: str, view: Recipe, summary: dict[str, Any],
              folder: Path) -> None:
        self.previous = sid
        if stage.kind == "train" and summary.get("final_model"):
            model = dataclasses.replace(view.model, name_or_path=summary["final_model"],
                                        init="pretrained", tokenizer=None, lora=None)
            self.latest = self.trained[sid] = _Handed(
                model, {k: getattr(view, k) for k in _TEMPLATE_KEYS})
        elif stage.kind != "train":
            self.outputs[sid] = folder / ("kept.jsonl" if stage.kind == "filter"
                                          else "samples.jsonl")


def _view(recipe: Recipe, stage: Stage, state: _Pipeline, r: int, i: int, folder: Path,
          label: str, registry: Any) -> Recipe:
    resume = stage.train.resume_from
    if resume == "last" and not (folder / "checkpoints" / "last.ckpt").exists():
        resume = None  # a stage that never started starts; the interrupted one resumes
    return stage_recipe(recipe, stage, **state.model_of(stage, label),
                        teacher=state.teacher_of(stage, label, registry),
                        data=state.data_of(stage, label), name=f"{recipe.name}-r{r}-{i}",
                        train=dataclasses.replace(stage.train, output_dir=str(folder),
                                                  resume_from=resume))


def stage_folder(base: Path, r: int, i: int, stage: Stage) -> Path:
    """``round-R/I-<id or kind>`` under the run directory."""
    return base / f"round-{r}" / f"{i}-{stage.id or stage.kind}"


def _run_stage(recipe: Recipe, stage: Stage, sid: str, state: _Pipeline, r: int, i: int,
               callbacks: list[Any] | None, pm: Any, registry: Any) -> dict[str, Any]:
    folder = stage_folder(state.base, r, i, stage)
    label = f"{folder.parent.name}/{folder.name}"
    view = _view(recipe, stage, state, r, i, folder, label, registry)
    summary = _earlier_run(folder, view, stage.kind)
    if summary is not None:
        print(f"tempering: {label} finished earlier ({folder}); skipping it", file=sys.stderr)
    else:
        print(f"tempering: stage {label}", file=sys.stderr)
        if stage.kind != "train":
            _record(folder, view)  # before any output: a resumed stage is the same stage
        ctx = StageContext(r, label, folder, state.input_of(stage), tuple(callbacks or ()))
        try:
            summary = STAGE_RUNNERS[stage.kind](view, ctx, pm, registry)
        except (ValueError, FileNotFoundError) as exc:
            if isinstance(exc, RecipeError) or str(exc).startswith(label):
                raise
            raise RecipeError(f"{label}: {exc}") from exc
        if stage.kind == "train":
            _record(folder, view)
        else:
            from tempering.pipeline.tracking import log_stage

            log_stage(view, recipe.name, label, folder, summary)
    state.after(stage, sid, view, summary, folder)
    return summary


def run_pipeline(recipe: Recipe, callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Run every stage of every round; returns (and writes to the run directory's
    ``summary.json``) ``stages``, each stage's main results (also in ``pipeline.json``, kept
    up to date as stages finish), ``rounds``, the per-round table (also in ``rounds.json``
    and ``rounds.md``), and ``final_model``, the model the last training stage saved.

    A recipe without ``stages`` and one round is one training run: its summary is returned."""
    if not recipe.stages and recipe.rounds == 1:  # one training run, as it always was
        from tempering.train.driver import run_recipe

        return run_recipe(recipe, callbacks)
    from tempering.plugin_manager import build_plugin_manager, build_registry

    pm = build_plugin_manager(recipe.plugins)
    registry = build_registry(pm)
    # Every stage's components are checked before the first one runs, named by their stage.
    validate_components(recipe, registry)
    stages = stages_of(recipe)
    _check_handoff(recipe, stages)
    base = Path(recipe.train.output_dir.format(name=recipe.name))
    state = _Pipeline(recipe, base)
    done: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    ids = stage_ids(stages)
    for r in range(1, recipe.rounds + 1):
        for i, stage in enumerate(stages):
            if stage.in_rounds and r not in stage.in_rounds:
                continue
            summary = _run_stage(recipe, stage, ids[i], state, r, i, callbacks, pm, registry)
            done.append({"round": r, "stage": i, "id": ids[i], "kind": stage.kind,
                         "output_dir": str(stage_folder(base, r, i, stage)),
                         **{k: v for k, v in summary.items() if k in _REPORTED}})
            base.mkdir(parents=True, exist_ok=True)
            (base / "pipeline.json").write_text(json.dumps(done, indent=2) + "\n")
    table = rounds_table(done)
    result = {"recipe": recipe.name, "output_dir": str(base), "stages": done, "rounds": table,
              "final_model": state.latest.model.name_or_path if state.latest else None}
    if table:
        (base / "rounds.json").write_text(json.dumps(table, indent=2) + "\n")
        (base / "rounds.md").write_text(rounds_markdown(table))  # also printed by the CLI
    (base / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


_REPORTED = ("global_step", "val_loss", "val_perplexity", "final_model", "exact_match",
             "prompts", "num_samples", "candidates", "kept", "prompts_kept", "yield",
             "mean_score", "max_score", "pass@1", "pass@N", "N", "eval_prompts", "rejected",
             "rejected_by")


def rounds_table(done: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per eval stage run, with the yield, kept count and candidate scores of the
    filter (and score) stages of its round that ran before it; a round's filter results
    that no eval stage follows are a row of their own."""
    rows: list[dict[str, Any]] = []
    pending: dict[str, Any] = {}
    for i, entry in enumerate(done):
        if entry["kind"] == "filter":
            pending.update({k: entry.get(k) for k in ("yield", "kept", "mean_score",
                                                       "max_score")})
        elif entry["kind"] == "eval":
            rows.append({"round": entry["round"], "stage": entry["id"], **pending,
                         **{k: entry.get(k) for k in ("pass@1", "pass@N", "N")}})
            pending = {}
        last_of_round = i + 1 == len(done) or done[i + 1]["round"] != entry["round"]
        if last_of_round and pending:
            rows.append({"round": entry["round"], "stage": "-", **pending})
            pending = {}
    return rows
