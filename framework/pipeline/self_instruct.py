"""Self-Instruct: the ``self_instruct`` stage grows instructions from seed tasks, the
``instances`` stage writes inputs and outputs for them.

``self_instruct``: each step shows the generator a few seed instructions and a few grown ones
in each of ``prompts_per_step`` prompts, parses the numbered instructions it writes, and runs
the filters over them against the whole pool (seeds and every instruction kept so far). A step
is appended to the part file as a whole (kept and rejected candidates alike), so a killed stage
replays its steps, rebuilding the pool exactly, and goes on with the next one; steps are seeded
by their index. It stops when ``num_instructions`` are kept or after ``max_steps``.

``instances``: in chunks of instructions, asks whether each is a classification task (unless
known), then asks for instances, input first, or label first for classification tasks, parses
and filters them; kept instances become conversations to train on.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
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
    Task,
    ask_function,
    growth_summary,
    numbered,
    parse_instances,
    parse_instructions,
    read_tasks,
    split_kept,
    user_turn,
)
from tempering.pipeline.samples import (
    ChunkLog,
    _read_part,
    done_chunks,
    finalise,
    gather,
    read_samples,
)
from tempering.recipe import Recipe

__all__ = ["run_self_instruct", "run_instances"]


def _entry(text: str, origin: str, **extra: Any) -> dict[str, Any]:
    return {"text": text, "instruction": text, "input": "", "output": "", "origin": origin,
            **extra}


def _prompts(view: Recipe, tasks: list[Task], grown: list[str], rng: random.Random
             ) -> list[tuple[str, list[str]]]:
    cfg = view.self_instruct
    out = []
    for _ in range(cfg.prompts_per_step):
        machine = rng.sample(grown, min(cfg.machine_examples, len(grown)))
        want = cfg.seed_examples + cfg.machine_examples - len(machine)
        shown = [t.instruction for t in rng.sample(tasks, min(want, len(tasks)))] + machine
        rng.shuffle(shown)
        out.append((cfg.prompt.format(examples=numbered(shown), count=cfg.request_count), shown))
    return out


def _step(view: Recipe, step: int, round_: int, generator: Any, tasks: list[Task],
          context: FilterContext, registry: Any) -> list[dict[str, Any]]:
    """One step's candidates, each with its decision."""
    grown = [h["text"] for h in context.history if h["origin"] == "machine"]
    seed = chunk_seed(view, round_, step)
    prompts = _prompts(view, tasks, grown, random.Random(seed))
    params = params_of(view, seed)
    answers = generator.generate([user_turn(p) for p, _ in prompts], params)
    candidates, rejects = [], []
    for p, ((_, shown), completions) in enumerate(zip(prompts, answers, strict=True)):
        for k, c in enumerate(completions):
            parsed = parse_instructions(c.text, c.finish_reason == "length")
            where = {"step": step, "prompt_id": f"s{step}-p{p}", "sample": k, "shown": shown}
            candidates += [_entry(t, "machine", **where) for t in parsed.items]
            rejects += [_entry(r["text"], "machine", **where, accepted=False,
                               filtered_by="parse", filter_reason=r["reason"])
                        for r in parsed.rejects]
    decided = apply_filters(candidates, view.self_instruct.filters, registry, context.label,
                            context).mark(candidates)
    return [{**r, "id": f"si-{round_}-{step}-{n}"} for n, r in enumerate(decided + rejects)]


def _grow_shard(rank: int, world: int, view: Recipe, ctx: StageContext,
                tasks: list[Task]) -> None:
    from tempering.plugin_manager import build_plugin_manager, build_registry

    cfg = view.self_instruct
    pm = build_plugin_manager(view.plugins)
    registry = build_registry(pm)
    part = ctx.folder / "part-0.jsonl"
    log = ChunkLog(part)  # cuts a torn last step
    context = FilterContext(history=[_entry(t.instruction, "seed", id=t.id) for t in tasks],
                            label=ctx.label)
    steps = _read_part(part)[0]
    for step in sorted(steps):  # replay: the pool as it was after each finished step
        context.history += [r for r in steps[step] if r["accepted"]]
    kept, step = sum(r["accepted"] for s in steps.values() for r in s), len(steps)
    if steps:
        print(f"tempering: resuming {ctx.label} after step {step} ({kept} kept)",
              file=sys.stderr)
    generator = None
    from tqdm.auto import tqdm

    with tqdm(total=cfg.num_instructions, initial=min(kept, cfg.num_instructions),
              desc=f"Growing instructions ({ctx.label})", unit="instr") as bar:
        while kept < cfg.num_instructions and step < cfg.max_steps:
            if generator is None:  # built only when a step is left to run
                generator = build_generator(view, pm, registry, rank)
                context.ask = ask_function(generator, params_of(view, None))
            records = _step(view, step, ctx.round, generator, tasks, context, registry)
            log.append(step, records)
            new = [r for r in records if r["accepted"]]
            context.history += new
            kept, step = kept + len(new), step + 1
            bar.update(min(len(new), max(0, cfg.num_instructions - bar.n)))


def run_self_instruct(view: Recipe, ctx: StageContext, pm: Any, registry: Any) -> dict[str, Any]:
    """Grow instructions; ``samples.jsonl`` holds the kept ones, ``rejects.jsonl`` every other
    candidate with the filter that dropped it and why."""
    cfg = view.self_instruct
    tasks = read_tasks(cfg.seeds, "self_instruct.seeds", view.data.on_bad_record)
    ctx.folder.mkdir(parents=True, exist_ok=True)
    run_shards(_grow_shard, view, 1, wants_own_process(view, registry, generator=True), ctx,
               tasks)
    records = gather(ctx.folder, len(done_chunks(ctx.folder)))
    kept, rejects = split_kept(records)
    summary = growth_summary("self_instruct", ctx.round, kept, rejects, seeds=len(tasks),
                             steps=len({r["step"] for r in records}),
                             target=cfg.num_instructions,
                             reached=len(kept) >= cfg.num_instructions)
    return finalise(ctx.folder, kept, summary, extra={"rejects.jsonl": rejects})


# --- instances ---------------------------------------------------------------------------


def _classify_examples(tasks: list[Task], k: int) -> str:
    known = [t for t in tasks if t.is_classification is not None]
    yes = [t for t in known if t.is_classification][:(k + 1) // 2]
    no = [t for t in known if not t.is_classification][:k - len(yes)]
    shown = [t for pair in zip(no, yes, strict=False) for t in pair] + no[len(yes):] + \
        yes[len(no):]
    return "".join(f"Task: {t.instruction}\nClassification: "
                   f"{'Yes' if t.is_classification else 'No'}\n\n" for t in shown)


def _instance_examples(tasks: list[Task], k: int, label_first: bool) -> str:
    pool = [t for t in tasks if t.instances and (t.is_classification or not label_first)]
    out = []
    for t in pool[:k]:
        lines = [f"Task: {t.instruction}"]
        for n, (inp, outp) in enumerate(t.instances, start=1):
            lines.append(f"Example {n}")
            lines += ([f"Class label: {outp}", f"Input: {inp or '<none>'}"] if label_first else
                      [f"Input: {inp or '<none>'}", f"Output: {outp}"])
        out.append("\n".join(lines) + "\n\n")
    return "".join(out)


def _classify(view: Recipe, tasks: list[dict[str, Any]], examples: str, ask: Any
              ) -> list[str]:
    """Per task: ``known`` (its record says), ``yes``, ``no`` or ``unclear`` (taken as no)."""
    cfg = view.self_instruct
    todo = [i for i, t in enumerate(tasks) if t.get("is_classification") is None]
    answers = ask([cfg.classify_prompt.format(examples=examples, instruction=tasks[i]["text"])
                   for i in todo], 4) if todo else []
    out = ["known"] * len(tasks)
    for i, answer in zip(todo, answers, strict=True):
        words = answer.strip().lower().split()
        first = words[0].strip(".,:;!\"'") if words else ""
        out[i] = first if first in ("yes", "no") else "unclear"
    return out


def _task_candidates(task: dict[str, Any], label_first: bool, completion: Any, verdict: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    parsed = parse_instances(completion.text, completion.finish_reason == "length", label_first)
    base = {"prompt_id": task["id"], "task_id": task["id"], "instruction": task["text"],
            "is_classification": label_first, "classification": verdict,
            "task_origin": task.get("origin")}
    candidates = [{**base, "input": i, "output": o, "text": o} for i, o in parsed.items]
    rejects = [{**base, "input": "", "output": "", "text": r["text"], "accepted": False,
                "filtered_by": "parse", "filter_reason": r["reason"]} for r in parsed.rejects]
    return candidates, rejects


def _conversation(record: dict[str, Any]) -> list[dict[str, Any]]:
    prompt = record["instruction"] + (f"\n\n{record['input']}" if record["input"] else "")
    return [{"role": "user", "content": prompt},
            {"role": "assistant", "content": record["output"], "train": True}]


def _instances_shard(rank: int, world: int, view: Recipe, ctx: StageContext,
                     tasks: list[dict[str, Any]], seeds: list[Task]) -> None:
    from tempering.plugin_manager import build_plugin_manager, build_registry

    cfg = view.self_instruct
    pm = build_plugin_manager(view.plugins)
    registry = build_registry(pm)
    state: dict[str, Any] = {}
    # The seed examples every prompt shows, the same for every chunk.
    classify_examples = _classify_examples(seeds, cfg.classify_examples)
    examples = {lf: _instance_examples(seeds, cfg.instance_examples, lf) for lf in (False, True)}

    def work(chunk: int, start: int, stop: int) -> list[dict[str, Any]]:
        generator = state.get("g") or state.setdefault("g", build_generator(view, pm, registry,
                                                                            rank))
        params = params_of(view, chunk_seed(view, ctx.round, chunk), n=1)
        ask = ask_function(generator, params)
        batch = tasks[start:stop]
        verdicts = _classify(view, batch, classify_examples, ask)
        first = [bool(t.get("is_classification")) or v == "yes"
                 for t, v in zip(batch, verdicts, strict=True)]
        prompts = [(cfg.label_first_prompt if lf else cfg.instance_prompt).format(
            examples=examples[lf], instruction=t["text"], count=cfg.instances_per_task)
            for t, lf in zip(batch, first, strict=True)]
        answers = generator.generate([user_turn(p) for p in prompts], params)
        candidates: list[dict[str, Any]] = []
        rejects: list[dict[str, Any]] = []
        for t, lf, v, a in zip(batch, first, verdicts, answers, strict=True):
            c, r = _task_candidates(t, lf, a[0], v)
            candidates, rejects = candidates + c, rejects + r
        context = FilterContext(label=ctx.label, ask=ask)
        decided = apply_filters(candidates, cfg.instance_filters, registry, ctx.label,
                                context).mark(candidates)
        return [{**r, "id": f"inst-{chunk}-{n}",
                 **({"messages": _conversation(r)} if r["accepted"] else {})}
                for n, r in enumerate(decided + rejects)]

    run_chunks(ctx.folder, len(tasks), cfg.chunk_size, work, rank=rank, world=world,
               desc=f"Writing instances ({ctx.label})")


def run_instances(view: Recipe, ctx: StageContext, pm: Any, registry: Any) -> dict[str, Any]:
    """Instances for every instruction of the input stage; ``samples.jsonl`` holds the kept
    ones as conversations (``messages``), ``rejects.jsonl`` the others."""
    if ctx.input is None or not ctx.input.exists():
        raise ValueError(f"{ctx.label}: its input instructions ({ctx.input}) are not there")
    tasks = [{**r, "id": r.get("id") or f"task-{i}", "text": r.get("text") or r["instruction"]}
             for i, r in enumerate(read_samples(ctx.input))]
    if not tasks:
        raise ValueError(f"{ctx.label}: its input ({ctx.input}) holds no instruction")
    seeds = read_tasks(view.self_instruct.seeds, "self_instruct.seeds", view.data.on_bad_record)
    ctx.folder.mkdir(parents=True, exist_ok=True)
    run_shards(_instances_shard, view, 1, wants_own_process(view, registry, generator=True),
               ctx, tasks, seeds)
    records = gather(ctx.folder, -(-len(tasks) // view.self_instruct.chunk_size))
    kept, rejects = split_kept(records)
    by_task: dict[str, str] = {r["task_id"]: r["classification"] for r in records}
    summary = growth_summary("instances", ctx.round, kept, rejects, tasks=len(tasks),
                             tasks_with_instances=len({r["task_id"] for r in kept}),
                             classification=dict(Counter(by_task.values())))
    return finalise(ctx.folder, kept, summary, extra={"rejects.jsonl": rejects})
