"""Evol-Instruct: the ``evolve`` stage.

Each of ``evolve.rounds`` rounds takes the instructions of the round before (round 1: the
seeds), gives each an operator drawn uniformly (seeded by the chunk and the item), asks the
generator for the evolved instruction, then for a response to it, and runs the elimination
filters over both. A kept evolution goes on to the next round; a failed one's parent does (as
in the paper, a failure puts the instruction back). Every example records its seed, its
operator chain and its round. Each round works in chunks appended to ``evolution-R/``, so a
killed stage replays the rounds it finished and resumes inside the one it was in.
"""

from __future__ import annotations

import random
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from tempering.components import FilterContext
from tempering.pipeline.filtering import apply_filters
from tempering.pipeline.generate import (
    StageContext,
    build_generator,
    chunk_seed,
    params_of,
    run_chunks,
    run_shards,
    wants_own_process,
)
from tempering.pipeline.growth import (
    ask_function,
    count,
    growth_summary,
    read_tasks,
    split_kept,
    user_turn,
)
from tempering.pipeline.samples import finalise, gather
from tempering.recipe import Recipe

__all__ = ["run_evolve", "strip_heading"]


def strip_heading(text: str, prompt: str) -> str:
    """The evolved instruction without a copy of the prompt's last line (its answer heading,
    such as ``#New Instruction#:``) at its start."""
    heading = prompt.strip().splitlines()[-1].strip() if prompt.strip() else ""
    body = text.strip()
    if heading and body.lower().startswith(heading.lower()):
        body = body[len(heading):].strip()
    return body


def _seeds(view: Recipe) -> list[dict[str, Any]]:
    tasks = read_tasks(view.evolve.seeds, "evolve.seeds", view.data.on_bad_record)
    tasks = tasks[:view.evolve.max_seeds] if view.evolve.max_seeds else tasks
    items = []
    for t in tasks:
        text = t.instruction
        if t.instances and t.instances[0][0] and len(t.instances) == 1:
            text += "\n\n" + t.instances[0][0]  # an alpaca record: its input is part of it
        items.append({"seed_id": t.id, "seed": text, "instruction": text, "operators": []})
    return items


def _evolve_chunk(view: Recipe, round_: int, chunk: int, items: list[dict[str, Any]],
                  generator: Any, registry: Any, label: str, stage_round: int = 1
                  ) -> list[dict[str, Any]]:
    cfg = view.evolve
    # Seeded by the pipeline's round, the evolution round and the chunk.
    seed = chunk_seed(view, stage_round * 1000 + round_, chunk)
    rng = random.Random(seed)
    params = params_of(view, seed, n=1)
    picks = [cfg.operators[rng.randrange(len(cfg.operators))] for _ in items]
    prompts = [registry.get("evolution_operator", p.name).prompt(item["instruction"], **p.options)
               for p, item in zip(picks, items, strict=True)]
    evolved = [strip_heading(a[0].text, p) for a, p in zip(
        generator.generate([user_turn(p) for p in prompts], params), prompts, strict=True)]
    answers = generator.generate([user_turn(e) for e in evolved], params)
    pool = [{"prompt_id": f"{item['seed_id']}", "text": e, "instruction": e, "input": "",
             "output": a[0].text, "parent": item["instruction"], "prompt": p,
             "finish_reason": a[0].finish_reason, "num_tokens": a[0].num_tokens}
            for item, e, a, p in zip(items, evolved, answers, prompts, strict=True)]
    context = FilterContext(label=label, ask=ask_function(generator, params))
    decided = apply_filters(pool, cfg.filters, registry, label, context).mark(pool)
    return [{**entry, "id": f"evol-r{round_}-{item['seed_id']}-{chunk}-{i}",
             "seed_id": item["seed_id"], "seed": item["seed"], "round": round_,
             "operator": pick.name, "operators": [*item["operators"], pick.name],
             "parent_operators": item["operators"],
             "notes": dict(context.notes) if i == 0 else {}}  # the chunk's, once
            for i, (item, entry, pick) in enumerate(zip(items, decided, picks, strict=True))]


def _next(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The next round's instructions: each kept evolution, else its parent."""
    return [{"seed_id": r["seed_id"], "seed": r["seed"], "instruction": r["instruction"],
             "operators": r["operators"]} if r["accepted"] else
            {"seed_id": r["seed_id"], "seed": r["seed"], "instruction": r["parent"],
             "operators": r["parent_operators"]} for r in records]


def _evolve_shard(rank: int, world: int, view: Recipe, ctx: StageContext,
                  items: list[dict[str, Any]]) -> None:
    from tempering.plugin_manager import build_plugin_manager, build_registry

    pm = build_plugin_manager(view.plugins)
    registry = build_registry(pm)
    size = view.evolve.chunk_size
    state: dict[str, Any] = {}
    for r in range(1, view.evolve.rounds + 1):
        folder = ctx.folder / f"evolution-{r}"

        def work(chunk: int, start: int, stop: int, r: int = r,
                 items: list[dict[str, Any]] = items) -> list[dict[str, Any]]:
            generator = state.get("g") or state.setdefault(
                "g", build_generator(view, pm, registry, rank))
            return _evolve_chunk(view, r, chunk, items[start:stop], generator, registry,
                                 ctx.label, ctx.round)

        run_chunks(folder, len(items), size, work, desc=f"Evolving, round {r} ({ctx.label})")
        items = _next(gather(folder, -(-len(items) // size)))


def run_evolve(view: Recipe, ctx: StageContext, pm: Any, registry: Any) -> dict[str, Any]:
    """Evolve the seeds; ``samples.jsonl`` holds every kept evolution of every round as a
    conversation (the evolved instruction, its response), ``rejects.jsonl`` the eliminated."""
    items = _seeds(view)
    ctx.folder.mkdir(parents=True, exist_ok=True)
    run_shards(_evolve_shard, view, 1, wants_own_process(view, registry, generator=True), ctx,
               items)
    size = view.evolve.chunk_size
    records = [rec for r in range(1, view.evolve.rounds + 1)
               for rec in gather(ctx.folder / f"evolution-{r}", -(-len(items) // size))]
    accepted, rejects = split_kept(records)
    kept = [{**r, "messages": [{"role": "user", "content": r["instruction"]},
                               {"role": "assistant", "content": r["output"], "train": True}]}
            for r in accepted]
    notes = sum((Counter(r.get("notes", {})) for r in records), Counter())
    summary = growth_summary("evolve", ctx.round, kept, rejects, seeds=len(items),
                             rounds=view.evolve.rounds, kept_by_round=count(kept, "round"),
                             kept_by_operator=count(kept, "operator"), filter_notes=dict(notes))
    out = finalise(ctx.folder, kept, summary, extra={"rejects.jsonl": rejects})
    for r in range(1, view.evolve.rounds + 1):
        shutil.rmtree(Path(ctx.folder) / f"evolution-{r}", ignore_errors=True)
    return out
