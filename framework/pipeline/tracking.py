"""W&B for the stages that write samples: a table of samples with their scores and decisions,
the stage's summary, and its output files as a dataset artifact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tempering.pipeline.samples import read_samples, write_atomic
from tempering.recipe import Recipe

__all__ = ["log_stage", "TABLE_ROWS"]

TABLE_ROWS = 500  # samples shown in the W&B table (the artifact holds all of them)
_COLUMNS = ("id", "prompt_id", "round", "prompt", "text", "reference", "score", "num_tokens",
            "finish_reason", "kept", "filtered_by", "mode", "passed")


# The stages that grow instruction data: kept examples and rejects, with their provenance.
_GROWN = ("id", "origin", "seed_id", "round", "step", "operators", "instruction", "input",
          "output", "classification", "filtered_by", "filter_reason")
_GROWTH_STAGES = ("self_instruct", "instances", "evolve")


def _row(record: dict[str, Any], columns: tuple[str, ...] = _COLUMNS) -> list[Any]:
    prompt = next((m["content"] for m in reversed(record.get("messages", [])[:-1])
                   if m["role"] == "user"), "")
    values = {**record, "prompt": prompt}
    return [values.get(c) if not isinstance(values.get(c), (dict, list)) else
            json.dumps(values.get(c)) for c in columns]


def _tables(folder: Path, stage: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The samples table (and the rejects one, where the stage writes rejects)."""
    import wandb

    columns = _GROWN if stage in _GROWTH_STAGES else _COLUMNS
    tables = {"samples": samples}
    if (folder / "rejects.jsonl").exists():
        tables["rejects"] = read_samples(folder / "rejects.jsonl")
    return {name: wandb.Table(columns=list(columns),
                              data=[_row(r, columns) for r in rows[:TABLE_ROWS]])
            for name, rows in tables.items()}


def log_stage(view: Recipe, group: str, label: str, folder: Path,
              summary: dict[str, Any]) -> None:
    """One W&B run per stage (grouped by the recipe's name); ``wandb_dir`` is added to the
    stage's ``summary.json``."""
    w = view.wandb
    if not w.enabled or w.mode == "disabled":
        return
    import wandb

    run = wandb.init(project=w.project, name=f"{w.name or group} {label}", group=group,
                     job_type=str(summary.get("stage")), dir=str(folder), mode=w.mode,
                     tags=w.tags or None, config={"stage": label}, reinit="create_new")
    records = read_samples(folder / "samples.jsonl")
    run.log(_tables(folder, str(summary.get("stage")), records))
    run.summary.update({k: v for k, v in summary.items()
                        if isinstance(v, (int, float, str)) or v is None})
    for key in ("rejected_by", "dropped_by", "filter_notes"):  # counts by filter, one each
        run.summary.update({f"{key}/{k}": v for k, v in (summary.get(key) or {}).items()})
    artifact = wandb.Artifact(f"{view.name}-samples", type="dataset",
                              metadata={"stage": label, "records": len(records)})
    for name in ("samples.jsonl", "kept.jsonl", "rejects.jsonl"):
        if (folder / name).exists():
            artifact.add_file(str(folder / name))
    run.log_artifact(artifact)
    where = str(Path(run.dir).parent)
    run.finish()
    summary["wandb_dir"] = where
    write_atomic(folder / "summary.json", lambda f: f.write(json.dumps(summary, indent=2) + "\n"))
