"""The ``generate`` stage: N completions per prompt from the stage's model, written as samples.

Prompts are cut into chunks of ``generate.chunk_size``; each chunk is seeded from the sampling
seed, the round and its index, and appended whole to the rank's part file
(:mod:`tempering.pipeline.samples`), so a killed stage resumes after its last whole chunk and
``generate.devices`` ranks (processes) share the chunks with none lost or drawn twice.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tempering.generate.base import Completion, GenerationContext, GenerationParams
from tempering.pipeline.samples import ChunkLog, done_chunks, finalise, gather
from tempering.recipe import DataSource, Recipe

__all__ = ["Prompt", "StageContext", "read_prompts", "build_generator", "sample_records",
           "run_chunks", "run_shards", "wants_own_process", "run_generate", "chunk_seed"]


@dataclass(frozen=True)
class StageContext:
    """Where a stage runs in its pipeline.

    Attributes:
        round: the round (from 1).
        label: ``round-R/I-id``, for messages.
        folder: the stage's output folder.
        input: the samples file of the stage a score or filter stage reads (None otherwise).
        callbacks: extra Lightning callbacks for a training stage.
    """

    round: int
    label: str
    folder: Path
    input: Path | None = None
    callbacks: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Prompt:
    """A conversation up to the assistant turn to write, and that turn's reference content."""

    id: str
    messages: list[dict[str, Any]]
    reference: str | None
    origin: str


def _as_prompt(index: int, messages: list[dict[str, Any]], origin: str) -> Prompt:
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        return Prompt(f"p{index}", list(messages), None, origin)
    head = [{**m, "train": False} if m["role"] == "assistant" else dict(m)
            for m in messages[:last]]
    return Prompt(f"p{index}", head, messages[last]["content"], origin)


def read_prompts(view: Recipe, sources: list[DataSource], limit: int | None,
                 pm: Any, registry: Any) -> list[Prompt]:
    """The prompts of ``sources`` (read like training data, bad records as ``data.on_bad_record``
    says), the first ``limit`` of them."""
    from tempering.data.sources import BadRecordLog, load_conversations

    log = BadRecordLog()
    conversations = load_conversations(sources, pm.hook.format_example, registry,
                                       on_bad_record=view.data.on_bad_record,
                                       seed=view.train.seed, log=log,
                                       require_assistant=False)
    if log.total:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(log.counts.items()))
        print(f"tempering: skipped {log.total} prompt records ({kinds})", file=sys.stderr)
    prompts = [_as_prompt(i, c.messages, c.origin) for i, c in enumerate(conversations)]
    prompts = [p for p in prompts if p.messages and p.messages[-1]["role"] != "assistant"]
    return prompts[:limit] if limit is not None else prompts


def _device(accelerator: str, rank: int) -> str:
    import torch

    if accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available()):
        return f"cuda:{rank}"
    return "cpu"


def build_generator(view: Recipe, pm: Any, registry: Any, rank: int = 0) -> Any:
    """The stage's generation backend over its model (loaded here for an in-process one)."""
    from tempering.data.datamodule import recipe_encoder
    from tempering.generate.hf import stop_token_ids
    from tempering.recipe import resolve_bundled

    picked = view.generate.generator
    backend = registry.get("generator", picked.name)
    tokenizer = pm.hook.load_tokenizer(config=view.model)
    encoder = recipe_encoder(view, tokenizer, registry)
    model = None
    if backend.in_process:
        # the model as it is; adapters (and a 4-bit base) are for training it
        plain = dataclasses.replace(view.model, lora=None)
        model = pm.hook.load_model(role="policy", config=plain, seed=view.train.seed)
        model.to(_device(view.generate.accelerator, rank))
    sample = [{"role": "user", "content": "?"}, {"role": "assistant", "content": "ok"}]
    stops = stop_token_ids(tokenizer, model, encoder, sample)
    context = GenerationContext(model, tokenizer, encoder, tuple(stops),
                                model_path=resolve_bundled(view.model.name_or_path))
    generator = backend.build(context, **picked.options)
    if hasattr(generator, "progress") and not isinstance(generator.progress, bool):
        generator.progress = None  # the stage shows progress per chunk
    return generator


def chunk_seed(view: Recipe, round_: int, chunk: int) -> int:
    base = view.generate.sampling.seed
    base = view.train.seed if base is None else base
    return (base * 1_000_003 + round_ * 10_007 + chunk) % 2**31


def params_of(view: Recipe, seed: int | None, **changes: Any) -> GenerationParams:
    s = view.generate.sampling
    return GenerationParams(**{"n": s.n, "max_new_tokens": s.max_new_tokens,
                               "temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k,
                               "seed": seed, "stop": tuple(s.stop), **changes})


def split_reasoning(text: str) -> tuple[str, str | None]:
    """``<think>R</think>A`` -> ``(A, R)``; other text -> ``(text, None)``."""
    stripped = text.lstrip()
    if stripped.startswith("<think>") and "</think>" in stripped:
        head, _, answer = stripped[len("<think>"):].partition("</think>")
        return answer.strip(), head.strip()
    return text, None


def sample_records(view: Recipe, round_: int, prompt: Prompt, completions: list[Completion],
                   params: GenerationParams, **extra: Any) -> list[dict[str, Any]]:
    """One record per completion: the conversation to train on (the prompt's turns untrained),
    the answer, its reference, and where it came from."""
    out = []
    for k, c in enumerate(completions):
        answer, reasoning = c.text, c.reasoning
        if reasoning is None and view.generate.split_reasoning:
            answer, reasoning = split_reasoning(c.text)
        turn: dict[str, Any] = {"role": "assistant", "content": answer, "train": True}
        if reasoning is not None:
            turn["reasoning_content"] = reasoning
        out.append({"id": f"r{round_}-{prompt.id}-s{k}", "prompt_id": prompt.id, "sample": k,
                    "round": round_, "origin": prompt.origin,
                    "messages": [*prompt.messages, turn], "reference": prompt.reference,
                    "text": answer, "num_tokens": c.num_tokens, "finish_reason": c.finish_reason,
                    "generator": view.generate.generator.name, "model": view.model.name_or_path,
                    "sampling": {**dataclasses.asdict(params), "stop": list(params.stop)},
                    **extra})
    return out


def run_chunks(folder: Path, count: int, chunk_size: int, work: Any, *, rank: int = 0,
               world: int = 1, desc: str = "Generating") -> None:
    """Run ``work(chunk, start, stop) -> records`` for this rank's chunks that no part file
    holds yet, appending each to ``part-<rank>.jsonl``."""
    from tqdm.auto import tqdm

    chunks = -(-count // chunk_size)
    done = done_chunks(folder)
    mine = [c for c in range(chunks) if c % world == rank and c not in done]
    log = ChunkLog(folder / f"part-{rank}.jsonl")
    if done and rank == 0:
        print(f"tempering: resuming: {len(done)} of {chunks} chunks are written", file=sys.stderr)
    with tqdm(total=len(mine), desc=desc, unit="chunk", disable=rank != 0 or not mine) as bar:
        for c in mine:
            log.append(c, work(c, c * chunk_size, min(count, (c + 1) * chunk_size)))
            bar.update(1)


def wants_own_process(view: Recipe, registry: Any, *, generator: bool = False,
                      scorers: bool = False) -> bool:
    """Whether the stage's generation backend (``generator``) or one of its scorers
    (``scorers``) asks for a process of its own."""
    return ((generator and registry.get("generator", view.generate.generator.name).own_process)
            or (scorers and any(registry.get("scorer", s.name).own_process
                                for s in view.score.scorers)))


def run_shards(shard: Callable[..., None], view: Recipe, world: int, own_process: bool,
               *args: Any, **here: Any) -> None:
    """``shard(rank, world, view, *args)`` on each of ``world`` ranks: in this process for one
    rank (with the keyword arguments ``here`` too), unless ``own_process`` (then, and for
    several ranks, in spawned processes that end with the stage, taking what they loaded)."""
    if world == 1 and not own_process:
        shard(0, 1, view, *args, **here)
        return
    import torch.multiprocessing as mp

    try:
        mp.start_processes(shard, args=(world, view, *args), nprocs=world, start_method="spawn")
    except mp.ProcessRaisedException as exc:  # the child's traceback, as text
        from tempering.errors import user_errors

        kind, _, message = str(exc).strip().splitlines()[-1].partition(": ")
        if kind.rsplit(".", 1)[-1] in {e.__name__ for e in user_errors()}:  # stays one line
            raise ValueError(message) from exc
        raise


def _generate_shard(rank: int, world: int, view: Recipe, ctx: StageContext,
                    prompts: list[Prompt]) -> None:
    from tempering.plugin_manager import build_plugin_manager, build_registry

    pm = build_plugin_manager(view.plugins)
    generator = build_generator(view, pm, build_registry(pm), rank)

    def work(chunk: int, start: int, stop: int) -> list[dict[str, Any]]:
        params = params_of(view, chunk_seed(view, ctx.round, chunk))
        batch = prompts[start:stop]
        answers = generator.generate([p.messages for p in batch], params)
        return [r for p, a in zip(batch, answers, strict=True)
                for r in sample_records(view, ctx.round, p, a, params)]

    run_chunks(ctx.folder, len(prompts), view.generate.chunk_size, work, rank=rank, world=world,
               desc=f"Generating ({ctx.label})")


def run_generate(view: Recipe, ctx: StageContext, pm: Any, registry: Any) -> dict[str, Any]:
    """Generate for every prompt (``generate.devices`` processes share the chunks)."""
    g = view.generate
    prompts = read_prompts(view, g.prompts, g.max_prompts, pm, registry)
    if not prompts:
        raise ValueError(f"{ctx.label}: generate.prompts holds no prompt (a conversation that "
                         "does not end with its reply)")
    world = g.devices
    if world > 1 and not registry.get("generator", g.generator.name).in_process:
        raise ValueError(f"{ctx.label}: generate.devices: {world}, but backend "
                         f"{g.generator.name!r} does not generate in this process; use its own "
                         "parallelism (concurrency, tensor_parallel_size)")
    ctx.folder.mkdir(parents=True, exist_ok=True)
    run_shards(_generate_shard, view, world, wants_own_process(view, registry, generator=True),
               ctx, prompts)
    chunks = -(-len(prompts) // g.chunk_size)
    records = gather(ctx.folder, chunks)
    summary = {"stage": "generate", "round": ctx.round, "prompts": len(prompts),
               "num_samples": len(records), "samples_per_prompt": g.sampling.n,
               "generator": g.generator.name, "model": view.model.name_or_path,
               "finished": sum(r["finish_reason"] == "stop" for r in records),
               "mean_tokens": sum(r["num_tokens"] for r in records) / max(1, len(records))}
    return finalise(ctx.folder, records, summary)
