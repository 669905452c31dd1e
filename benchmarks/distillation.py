"""Distillation methods side by side at equal steps: plain SFT, hard labels, soft labels at a
few temperatures, and sequence-level distillation, all into the same smaller student.

    python benchmarks/distillation.py [--steps 800] [--temperatures 1 2 4] [--out benchmarks/results]

Built from the bundled ``distill-soft-quickstart`` recipe, run through tempering's pipeline:

1. the teacher (the bundled tiny Llama config) is trained once on the first 3,000 task records;
2. each student (a quarter of the teacher's width, half its depth, the same seed) is trained
   for ``--steps`` steps on the same 3,000 prompts:
   - ``sft``: cross-entropy on the tasks' reference answers (no teacher);
   - ``hard_ce``: cross-entropy on the teacher's argmax token at each position;
   - ``soft_kl T=t``: KL to the teacher's temperature-softened distribution, times T^2;
   - ``soft_kl T=1 cached k=K``: the same as ``soft_kl T=1`` from a cached teacher
     (``train.teacher_top_k``: its top K log-probabilities stored once, the rest spread
     uniformly); "held-out loss at the start" (the objective for the untrained student) shows
     how close the cached teacher is to the online one;
   - ``sequence``: the teacher answers the 3,000 prompts greedily (a generate stage) and the
     student is trained by SFT on those answers (no verifier filter: the comparison is of what
     each method learns from the teacher alone);
3. every model answers the 100 held-out tasks greedily (pass@1 by exact match), and its plain
   next-token perplexity on the held-out references is read from its training summary.

Writes ``distillation.json``, ``distillation.md`` and ``distillation.png`` (matplotlib, extra
``bench``) to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "distill-soft-quickstart.yaml"


def _base(steps: int, work: Path) -> dict[str, Any]:
    raw = yaml.safe_load(RECIPE.read_text())
    raw["trainer"]["max_steps"] = steps
    raw["wandb"] = {"mode": "disabled"}
    raw["train"]["output_dir"] = str(work / "{name}")
    return raw


def _student_stage(raw: dict[str, Any], objective: Any, data: Any = None) -> dict[str, Any]:
    stage = copy.deepcopy(raw["stages"][1])  # the recipe's student: its size and seed
    stage["objective"] = objective
    if data is not None:
        stage["data"] = data
    return stage


def _run(raw: dict[str, Any]) -> dict[str, Any]:
    from tempering.pipeline import run_pipeline
    from tempering.recipe import load_recipe

    return run_pipeline(load_recipe(raw))


def _results(summary: dict[str, Any], train_id: str, eval_id: str) -> dict[str, Any]:
    stages = {s["id"]: s for s in summary["stages"]}
    train, evaluation = stages[train_id], stages[eval_id]
    full = json.loads((Path(train["output_dir"]) / "summary.json").read_text())
    cache = full.get("teacher_cache", {}).get("train", {})
    return {"pass@1": evaluation["pass@1"], "val_perplexity": train.get("val_perplexity"),
            "val_loss": train.get("val_loss"), "val_loss_before": full.get("val_loss_before"),
            "cache_bytes_per_token": cache.get("bytes_per_token"),
            "steps": train.get("global_step")}


def _teacher(raw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    run = copy.deepcopy(raw)
    run.update(name="kd-teacher", stages=[raw["stages"][0],
                                          {"kind": "eval", "id": "eval", "model_from": "teacher"}])
    run.pop("teacher")
    summary = _run(run)
    final = next(s["final_model"] for s in summary["stages"] if s["id"] == "teacher")
    return final, _results(summary, "teacher", "eval")


def _student(raw: dict[str, Any], name: str, teacher: str, objective: Any,
             top_k: int = 0) -> dict[str, Any]:
    run = copy.deepcopy(raw)
    stage = _student_stage(raw, objective)
    if top_k:
        stage["train"] = {**stage.get("train", {}), "teacher_top_k": top_k}
    run.update(name=f"kd-{name}", stages=[stage,
                                          {"kind": "eval", "id": "eval", "model_from": "student"}])
    if objective == "cross_entropy":
        run.pop("teacher")
    else:
        run["teacher"] = {"name_or_path": teacher, "dtype": "float32"}
    return _results(_run(run), "student", "eval")


def _sequence(raw: dict[str, Any], teacher: str) -> dict[str, Any]:
    run = copy.deepcopy(raw)
    run.pop("teacher")
    prompts = [dict(raw["data"]["train"][0])]  # the same 3,000 records' prompts
    run["generate"] = {**raw["generate"], "prompts": prompts, "chunk_size": 128}
    generate = {"kind": "generate", "model_from": "recipe",
                "model": {"name_or_path": teacher, "init": "pretrained"}}
    # an empty answer cannot be trained on: skipped and counted in the stage's summary
    data = {"train": [{"path": "stage:generate", "format": "messages"}], "on_bad_record": "skip"}
    run.update(name="kd-sequence", stages=[
        generate, _student_stage(raw, "cross_entropy", data),
        {"kind": "eval", "id": "eval", "model_from": "student"}])
    return _results(_run(run), "student", "eval")


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["method"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.bar(names, [r["pass@1"] for r in rows], color="#4c72b0")
    left.set_title("held-out pass@1 (exact match, greedy)")
    left.set_ylim(0, max(0.05, max(r["pass@1"] for r in rows) * 1.2))
    right.bar(names, [r["val_perplexity"] for r in rows], color="#dd8452")
    right.set_title("held-out perplexity of the references")
    for axis in (left, right):
        axis.tick_params(axis="x", rotation=35)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--cached-k", type=int, nargs="*", default=[8, 32, 128],
                        help="soft_kl T=1 again from a cached teacher with these top-k")
    parser.add_argument("--work", type=Path, default=Path("runs/distillation-benchmark"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raw = _base(args.steps, args.work.resolve())
    started = time.perf_counter()
    teacher, teacher_result = _teacher(raw)
    rows = [{"method": "teacher", **teacher_result}]
    methods: list[tuple[str, Any]] = [("sft", "cross_entropy"), ("hard_ce", {"name": "hard_ce"})]
    methods += [(f"soft_kl T={t:g}", {"name": "soft_kl", "temperature": t})
                for t in args.temperatures]
    for name, objective in methods:
        rows.append({"method": name, **_student(raw, name.replace(" ", "").replace("=", ""),
                                                 teacher, objective)})
    for k in args.cached_k:
        rows.append({"method": f"soft_kl T=1 cached k={k}",
                     **_student(raw, f"cached{k}", teacher,
                                {"name": "soft_kl", "temperature": 1.0}, top_k=k)})
    rows.append({"method": "sequence", **_sequence(raw, teacher)})
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "steps": args.steps, "seconds": round(time.perf_counter() - started, 1),
            "student": raw["stages"][1]["model"]["config_overrides"]}
    (args.out / "distillation.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    def cell(value: Any, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    table = ["| model | pass@1 | held-out perplexity | held-out loss at the start | "
             "cache bytes / token | steps |", "|---|---|---|---|---|---|"]
    table += [f"| {r['method']} | {r['pass@1']:.3f} | {r['val_perplexity']:.3f} | "
              f"{cell(r['val_loss_before'], '.4f')} | "
              f"{cell(r['cache_bytes_per_token'], ',.0f')} | {r['steps']} |" for r in rows]
    (args.out / "distillation.md").write_text(
        "# Distillation methods at equal steps\n\n"
        f"`python benchmarks/distillation.py --steps {args.steps}` on {meta['machine']}, "
        f"{meta['seconds']:.0f} s. Student: the bundled tiny Llama with "
        f"{meta['student']}; every student has the same seed, steps and prompts.\n\n"
        + "\n".join(table) + "\n\n![pass@1 and perplexity](distillation.png)\n")
    _plot(rows, args.out / "distillation.png")
    print("\n".join(table))


if __name__ == "__main__":
    main()
