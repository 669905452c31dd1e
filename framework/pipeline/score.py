"""The ``score`` and ``filter`` stages over an earlier stage's samples."""

from __future__ import annotations

from typing import Any

from tempering.pipeline.filtering import apply_filters
from tempering.pipeline.generate import StageContext, run_chunks, run_shards, wants_own_process
from tempering.pipeline.samples import finalise, gather, read_samples
from tempering.recipe import Recipe

__all__ = ["score_records", "run_score", "run_filter", "score_stats"]


def _scorer_keys(view: Recipe) -> list[str]:
    """Each scorer's key in a sample's ``scores``: its name, numbered when listed twice."""
    names = [s.name for s in view.score.scorers]
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]


def score_records(view: Recipe, records: list[dict[str, Any]], registry: Any,
                  label: str) -> list[dict[str, Any]]:
    """``records`` with ``scores`` (one per scorer) and ``score``, their weighted sum."""
    prompts = [r["messages"][:-1] for r in records]
    texts = [r["text"] for r in records]
    references = [r.get("reference") for r in records]
    weights = view.score.weights or [1.0] * len(view.score.scorers)
    columns = []
    for picked in view.score.scorers:
        scorer = registry.get("scorer", picked.name)
        values = scorer.score(prompts, texts, references, **picked.options)
        if len(values) != len(records):
            raise ValueError(f"{label}: scorer {picked.name!r} returned {len(values)} scores for "
                             f"{len(records)} samples")
        try:
            columns.append([float(v) for v in values])
        except (TypeError, ValueError):
            raise ValueError(f"{label}: scorer {picked.name!r} returned a score that is not a "
                             "number") from None
    keys = _scorer_keys(view)
    out = []
    for i, record in enumerate(records):
        scores = {k: col[i] for k, col in zip(keys, columns, strict=True)}
        total = sum(w * col[i] for w, col in zip(weights, columns, strict=True))
        out.append({**record, "scores": scores, "score": total})
    return out


def score_stats(records: list[dict[str, Any]]) -> dict[str, Any]:
    scores = [r["score"] for r in records if r.get("score") is not None]
    if not scores:
        return {"mean_score": None, "max_score": None}
    return {"mean_score": sum(scores) / len(scores), "max_score": max(scores)}


def _input(ctx: StageContext) -> list[dict[str, Any]]:
    if ctx.input is None or not ctx.input.exists():
        raise ValueError(f"{ctx.label}: its input samples ({ctx.input}) are not there")
    return read_samples(ctx.input)


def _score_shard(rank: int, world: int, view: Recipe, ctx: StageContext,
                 plugins: Any = None) -> None:
    """Score the input's chunks that are not written yet (a spawned process builds its own
    plugins)."""
    from tempering.plugin_manager import build_plugin_manager, build_registry

    registry = plugins or build_registry(build_plugin_manager(view.plugins))
    records = _input(ctx)

    def work(chunk: int, start: int, stop: int) -> list[dict[str, Any]]:
        return score_records(view, records[start:stop], registry, ctx.label)

    run_chunks(ctx.folder, len(records), view.score.chunk_size, work, rank=rank, world=world,
               desc=f"Scoring ({ctx.label})")


def run_score(view: Recipe, ctx: StageContext, pm: Any, registry: Any) -> dict[str, Any]:
    """Score every input sample, a chunk at a time (resumable like generation)."""
    records = _input(ctx)
    size = view.score.chunk_size
    ctx.folder.mkdir(parents=True, exist_ok=True)
    run_shards(_score_shard, view, 1, wants_own_process(view, registry, scorers=True), ctx,
               plugins=registry)
    scored = gather(ctx.folder, -(-len(records) // size))
    summary = {"stage": "score", "round": ctx.round, "num_samples": len(scored),
               "scorers": _scorer_keys(view), **score_stats(scored)}
    return finalise(ctx.folder, scored, summary)


def _pool_entry(record: dict[str, Any]) -> dict[str, Any]:
    """What a filter sees of a sample (``score`` None when it was never scored)."""
    keys = ("prompt_id", "text", "score", "scores", "num_tokens", "finish_reason", "reference")
    return {k: record.get(k) for k in keys}


def run_filter(view: Recipe, ctx: StageContext, pm: Any, registry: Any) -> dict[str, Any]:
    """Apply the filters in order to the whole pool; every sample records the decision,
    and ``kept.jsonl`` holds the survivors (what a training stage reads as ``stage:<id>``)."""
    records = _input(ctx)
    verdicts = apply_filters([_pool_entry(r) for r in records], view.filter.filters, registry,
                             ctx.label)
    decided = verdicts.mark(records, key="kept")
    kept = [r for r in decided if r["kept"]]
    prompts = {r["prompt_id"] for r in records}
    summary = {"stage": "filter", "round": ctx.round, "candidates": len(records),
               "kept": len(kept), "prompts": len(prompts),
               "prompts_kept": len({r["prompt_id"] for r in kept}),
               "yield": len({r["prompt_id"] for r in kept}) / max(1, len(prompts)),
               "dropped_by": verdicts.counts(), **score_stats(records)}
    ctx.folder.mkdir(parents=True, exist_ok=True)
    return finalise(ctx.folder, decided, summary, extra={"kept.jsonl": kept})
