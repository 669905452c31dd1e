"""The ``eval`` stage: pass@1 (greedy) and pass@N (N samples) on held-out prompts.

A sample passes when its score (``score.scorers``, weighted) is at least ``eval.pass_score``.
pass@1 is the share of prompts whose greedy answer passes; pass@N the share of prompts with at
least one passing sample among N drawn with ``generate.sampling`` (with exactly N samples
drawn, the unbiased estimator of Chen et al. (2021) is this share).
"""

from __future__ import annotations

from typing import Any

from tempering.pipeline.generate import (
    Prompt,
    StageContext,
    build_generator,
    chunk_seed,
    params_of,
    read_prompts,
    run_chunks,
    run_shards,
    sample_records,
    wants_own_process,
)
from tempering.pipeline.samples import finalise, gather
from tempering.pipeline.score import score_records
from tempering.recipe import Recipe

__all__ = ["run_eval", "pass_rates"]


def pass_rates(records: list[dict[str, Any]], pass_score: float) -> dict[str, Any]:
    """pass@1 from the greedy records, pass@N from the sampled ones, per prompt."""
    greedy = [r for r in records if r["mode"] == "greedy"]
    sampled: dict[str, list[bool]] = {}
    for r in records:
        if r["mode"] == "sampled":
            sampled.setdefault(r["prompt_id"], []).append(r["score"] >= pass_score)
    return {"pass@1": sum(r["score"] >= pass_score for r in greedy) / max(1, len(greedy)),
            "pass@N": sum(any(v) for v in sampled.values()) / max(1, len(sampled)),
            "N": max((len(v) for v in sampled.values()), default=0),
            "eval_prompts": len(greedy),
            "mean_score": sum(r["score"] for r in greedy) / max(1, len(greedy))}


def _eval_shard(rank: int, world: int, view: Recipe, ctx: StageContext, prompts: list[Prompt],
                pm: Any = None, plugins: Any = None) -> None:
    """This rank's chunks of the held-out prompts (a spawned rank builds its own plugins)."""
    from tempering.plugin_manager import build_plugin_manager, build_registry

    if pm is None:
        pm = build_plugin_manager(view.plugins)
    registry = plugins or build_registry(pm)
    generator = build_generator(view, pm, registry, rank)

    def work(chunk: int, start: int, stop: int) -> list[dict[str, Any]]:
        batch = prompts[start:stop]
        messages = [p.messages for p in batch]
        greedy = params_of(view, None, n=1, temperature=0.0)
        sampled = params_of(view, chunk_seed(view, ctx.round, chunk), n=view.eval.pass_at)
        records = []
        for params, mode in ((greedy, "greedy"), (sampled, "sampled")):
            answers = generator.generate(messages, params)
            records += [r for p, a in zip(batch, answers, strict=True)
                        for r in sample_records(view, ctx.round, p, a, params, mode=mode)]
        for r in records:
            r["id"] = f"{r['id']}-{r['mode']}"
        return score_records(view, records, registry, ctx.label)

    run_chunks(ctx.folder, len(prompts), view.generate.chunk_size, work, rank=rank, world=world,
               desc=f"Evaluating ({ctx.label})")


def run_eval(view: Recipe, ctx: StageContext, pm: Any, registry: Any) -> dict[str, Any]:
    """Answer every held-out prompt greedily and N times sampled; score; pass rates."""
    sources = view.eval.prompts or view.data.validation
    prompts = read_prompts(view, sources, view.eval.max_prompts, pm, registry)
    if not prompts:
        raise ValueError(f"{ctx.label}: no held-out prompt to evaluate on")
    ctx.folder.mkdir(parents=True, exist_ok=True)
    own = wants_own_process(view, registry, generator=True, scorers=True)
    run_shards(_eval_shard, view, 1, own, ctx, prompts, pm=pm, plugins=registry)
    records = gather(ctx.folder, -(-len(prompts) // view.generate.chunk_size))
    for r in records:
        r["passed"] = r["score"] >= view.eval.pass_score
    summary = {"stage": "eval", "round": ctx.round, "model": view.model.name_or_path,
               **pass_rates(records, view.eval.pass_score)}
    return finalise(ctx.folder, records, summary)
