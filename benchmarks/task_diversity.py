"""Task diversity at an equal token budget: the tiny model instruction-tuned on mixtures of 1,
4 and 16 tasks, evaluated zero-shot on held-out phrasings and held-out tasks (FLAN's finding
that the number of tasks matters more than the data per task, at the tiny scale).

    python benchmarks/task_diversity.py [--steps 1200] [--seeds 0] [--out benchmarks/results]

Runs the bundled ``task-diversity`` recipe through tempering's pipeline, once per seed (three
training stages: the same steps, rows per step and row length, so the same token budget; only
the mixture differs). Every model is scored on the same held-out data:

- ``held-out tasks``: the 4 tasks no mixture trains on, every phrasing;
- ``held-out phrasings``: phrasing 4 of every formatter (never trained on), on the mixture's
  own tasks (the mean over them), and on ``addition``, the one task all three mixtures train;
- ``seen phrasings``: the mixture's tasks in their trained phrasings, on unseen records.

Each cell is the greedy zero-shot exact match (25 answers per task and split) and the
teacher-forced loss of the reference answers (40 per task and split; lower is better), the
mean over seeds. Writes ``task_diversity.json``, ``task_diversity.md`` and ``task_diversity.png``
(matplotlib, extra ``bench``) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "task-diversity.yaml"
SPLITS = ("held_out_tasks", "held_out_phrasings", "seen_phrasings")
COMMON = "addition"  # the task every mixture trains on


def _run(seed: int, steps: int, work: Path) -> list[dict[str, Any]]:
    """One run of the recipe; the summary of each of its training stages."""
    from tempering.pipeline import run_pipeline
    from tempering.recipe import load_recipe

    recipe = load_recipe(RECIPE, [f"trainer.max_steps={steps}", f"train.seed={seed}",
                                  f"train.output_dir={work}/seed-{seed}", "wandb.mode=disabled",
                                  "train.overwrite=true"])
    result = run_pipeline(recipe)
    return [json.loads((Path(s["output_dir"]) / "summary.json").read_text())
            for s in result["stages"]]


def _row(summary: dict[str, Any]) -> dict[str, Any]:
    by_task = summary["eval_by_task"]
    row: dict[str, Any] = {"tasks": len(summary["mixture"]["tasks"]),
                           "steps": summary["global_step"],
                           "train_examples": summary["mixture"]["examples"]}
    for split in SPLITS:
        row[f"{split}/exact_match"] = summary[f"{split}/exact_match"]
        row[f"{split}/answer_loss"] = summary[f"{split}/answer_loss"]
    common = by_task[f"held_out_phrasings/{COMMON}"]
    row[f"{COMMON}_held_out_phrasing/exact_match"] = common["exact_match"]
    row[f"{COMMON}_held_out_phrasing/answer_loss"] = common["answer_loss"]
    row["held_out_task_scores"] = {k.split("/", 1)[1]: v for k, v in by_task.items()
                                   if k.startswith("held_out_tasks/")}
    return row


def _mean(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The seeds' mean of every number (the held-out tasks' scores too)."""
    out = dict(rows[0])
    for key, value in rows[0].items():
        if isinstance(value, float):
            out[key] = sum(r[key] for r in rows) / len(rows)
    out["held_out_task_scores"] = {
        task: {k: sum(r["held_out_task_scores"][task][k] for r in rows) / len(rows)
               for k in ("exact_match", "answer_loss")}
        for task in rows[0]["held_out_task_scores"]}
    return out


_COLUMNS = [("held-out tasks", "held_out_tasks"), ("held-out phrasings", "held_out_phrasings"),
            (f"held-out phrasing, {COMMON}", f"{COMMON}_held_out_phrasing"),
            ("seen phrasings", "seen_phrasings")]


def _table(rows: list[dict[str, Any]]) -> list[str]:
    head = "| tasks | " + " | ".join(f"{name}: exact match / answer loss"
                                     for name, _ in _COLUMNS) + " |"
    lines = [head, "|---" * (len(_COLUMNS) + 1) + "|"]
    for r in rows:
        cells = [f"{r[f'{key}/exact_match']:.3f} / {r[f'{key}/answer_loss']:.3f}"
                 for _, key in _COLUMNS]
        lines.append(f"| {r['tasks']} | " + " | ".join(cells) + " |")
    return lines


def _task_table(rows: list[dict[str, Any]]) -> list[str]:
    """Each held-out task's answer loss (and exact match) per mixture."""
    tasks = sorted(rows[0]["held_out_task_scores"])
    lines = ["| tasks | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for r in rows:
        scores = r["held_out_task_scores"]
        lines.append(f"| {r['tasks']} | " + " | ".join(
            f"{scores[t]['exact_match']:.2f} / {scores[t]['answer_loss']:.3f}" for t in tasks)
            + " |")
    return lines


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    counts = [r["tasks"] for r in rows]
    for name, key in _COLUMNS:
        left.plot(counts, [r[f"{key}/exact_match"] for r in rows], marker="o", label=name)
        right.plot(counts, [r[f"{key}/answer_loss"] for r in rows], marker="o", label=name)
    left.set_title("zero-shot exact match (greedy)")
    right.set_title("teacher-forced loss of the reference answers")
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_xticks(counts, [str(c) for c in counts])
        axis.set_xlabel("training tasks (equal token budget)")
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--work", type=Path, default=Path("runs/task-diversity-benchmark"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    per_seed = [[_row(s) for s in _run(seed, args.steps, args.work.resolve())]
                for seed in args.seeds]
    rows = [_mean([seed_rows[i] for seed_rows in per_seed]) for i in range(len(per_seed[0]))]
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "steps": args.steps, "seeds": args.seeds,
            "seconds": round(time.perf_counter() - started, 1)}
    (args.out / "task_diversity.json").write_text(
        json.dumps({**meta, "rows": rows, "per_seed": per_seed}, indent=2) + "\n")
    table = _table(rows)
    seeds = " ".join(map(str, args.seeds))
    (args.out / "task_diversity.md").write_text(
        "# Task diversity at an equal token budget\n\n"
        f"`python benchmarks/task_diversity.py --steps {args.steps} --seeds {seeds}` on "
        f"{meta['machine']}, {meta['seconds']:.0f} s. The bundled tiny Llama from scratch, "
        f"{args.steps} steps of 8 packed rows of 256 tokens for every mixture; zero-shot "
        "evaluation; each cell is exact match / teacher-forced answer loss (mean over seeds).\n\n"
        + "\n".join(table) + "\n\nEach held-out task (exact match / answer loss):\n\n"
        + "\n".join(_task_table(rows)) + "\n\n![task diversity](task_diversity.png)\n")
    _plot(rows, args.out / "task_diversity.png")
    print("\n".join(table))


if __name__ == "__main__":
    main()
