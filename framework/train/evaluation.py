"""Held-out evaluation by generation: answers to the last user turns, scored by metrics.

Conversations tagged by a task mixture (``data.mixture``) are scored per task and split
(``seen_phrasings``, ``held_out_phrasings``, ``held_out_tasks``), each with its own budget."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from tempering.data.sources import Conversation
from tempering.generate.base import GenerationContext, GenerationParams, Generator

__all__ = ["evaluate_answers", "evaluate_generation", "evaluate_turns", "eval_generator",
           "group_of", "split_of"]


def group_of(conversation: Conversation) -> tuple[str, str] | None:
    """``(split, task)`` of a mixture's held-out conversation (the split names its number of
    exemplars when it has some: ``held_out_tasks@2shot``), None for other data."""
    tags = conversation.tags
    if "split" not in tags:
        return None
    shots = tags.get("shots") or 0
    return (f"{tags['split']}@{shots}shot" if shots else tags["split"]), tags["task"]


def split_of(group: str) -> str:
    return group.split("/", 1)[0]


def _pick(conversations: list[Conversation], limit: int) -> list[Conversation]:
    """Conversations that end with an answer: the first ``limit``, or per group."""
    items = [c for c in conversations if c.messages[-1]["role"] == "assistant"]
    taken: dict[Any, int] = defaultdict(int)
    out = []
    for c in items:
        key = group_of(c)
        if taken[key] < limit:
            taken[key] += 1
            out.append(c)
    return out


def _means(rows: list[tuple[Any, dict[str, float]]], names: list[str]) -> dict[Any, Any]:
    sums: dict[Any, dict[str, float]] = defaultdict(lambda: dict.fromkeys(names, 0.0))
    counts: dict[Any, int] = defaultdict(int)
    for key, scores in rows:
        counts[key] += 1
        for name in names:
            sums[key][name] += scores[name]
    return {key: {**{n: v / counts[key] for n, v in s.items()}, "n": counts[key]}
            for key, s in sums.items()}


def evaluate_answers(generator: Generator, conversations: list[Conversation],
                     metrics: list[tuple[Any, dict[str, Any]]], *, params: GenerationParams,
                     limit: int) -> dict[str, Any]:
    """Answer the last user turn of up to ``limit`` conversations that end with an assistant
    turn (``limit`` per task and split for a mixture's); each metric (a
    :class:`tempering.Metric` with its options) is the mean of its score of the stripped answer
    against the stripped reference.

    Returns:
        ``{"scores": {metric: mean or None}, "samples": n, "examples": [...first 8 (one per
        group for a mixture)], "by_task": {"split/task": {metric: mean, "n": count}},
        "by_split": {split: {metric: mean over its tasks (macro), "tasks": count}}}``.
    """
    items = _pick(conversations, limit)
    names = [m.name for m, _ in metrics]
    if not items:
        return {"scores": dict.fromkeys(names), "samples": 0, "examples": [], "by_task": {},
                "by_split": {}}
    completions = generator.generate([c.messages[:-1] for c in items], params)
    answers = [c[0].text.strip() for c in completions]
    references = [c.messages[-1]["content"].strip() for c in items]
    rows = [{m.name: float(m.score(a, r, **options)) for m, options in metrics}
            for a, r in zip(answers, references, strict=True)]
    scores = {n: sum(row[n] for row in rows) / len(rows) for n in names}
    grouped = [(f"{g[0]}/{g[1]}", row) for c, row in zip(items, rows, strict=True)
               if (g := group_of(c)) is not None]
    by_task = _means(grouped, names)
    by_split: dict[str, Any] = {}
    for key, values in by_task.items():
        entry = by_split.setdefault(split_of(key), {**dict.fromkeys(names, 0.0), "tasks": 0})
        entry["tasks"] += 1
        for n in names:
            entry[n] += values[n]
    for entry in by_split.values():
        for n in names:
            entry[n] /= entry["tasks"]
    shown: dict[Any, int] = defaultdict(int)
    examples: list[dict[str, Any]] = []
    for c, a, r in zip(items, answers, references, strict=True):
        key = group_of(c)
        if len(examples) < (8 if key is None else 64) and shown[key] < (8 if key is None else 1):
            shown[key] += 1
            examples.append({"prompt": c.messages[-2]["content"], "reference": r, "answer": a,
                             **({"group": f"{key[0]}/{key[1]}"} if key else {})})
    return {"scores": scores, "samples": len(items), "examples": examples, "by_task": by_task,
            "by_split": by_split}


def eval_generator(model: Any, dm: Any, recipe: Any, tokenizer: Any, registry: Any,
                   progress: str) -> Generator:
    """The recipe's ``eval.generator`` over ``model``, stopping at the trained end-of-turn
    tokens and the model's EOS ids (its generation config holds both by now)."""
    from tempering.generate import HFGenerator
    from tempering.generate.hf import stop_token_ids

    sample = next((c.messages for c in dm.val_conversations
                   if c.messages[-1]["role"] == "assistant"), None)
    if sample is not None:  # the template's end-of-turn token, trained or not
        stops = set(stop_token_ids(tokenizer, model, dm.encoder, sample))
    else:
        eos = getattr(model.generation_config, "eos_token_id", None)
        stops = {*(eos if isinstance(eos, list) else [eos] if eos is not None else []),
                 *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])}
    backend = registry.get("generator", recipe.eval.generator.name)
    generator = backend.build(GenerationContext(model, tokenizer, dm.encoder,
                                                tuple(sorted(stops))),
                              **recipe.eval.generator.options)
    if isinstance(generator, HFGenerator):
        generator.progress = progress
    return generator


def evaluate_generation(model: Any, dm: Any, recipe: Any, tokenizer: Any,
                        registry: Any) -> dict[str, Any] | None:
    """:func:`evaluate_answers` on the validation conversations, as ``eval`` says (None
    when ``eval.generate_samples`` is 0 or there is nothing held out)."""
    if recipe.eval.generate_samples <= 0 or not any(
            c.messages[-1]["role"] == "assistant" for c in dm.val_conversations):
        return None
    generator = eval_generator(model, dm, recipe, tokenizer, registry,
                               "Generating held-out answers")
    metrics = [(registry.get("metric", m.name), m.options) for m in recipe.eval.metrics]
    result = evaluate_answers(generator, dm.val_conversations, metrics,
                              params=GenerationParams(max_new_tokens=recipe.eval.max_new_tokens),
                              limit=recipe.eval.generate_samples)
    if result["by_task"]:
        _add_answer_losses(result, model, dm.val_conversations, recipe, tokenizer, registry)
    return result


def _every_turn_encoder(recipe: Any, tokenizer: Any, registry: Any) -> Any:
    """The run's encoder with every assistant turn trained (for losses by turn)."""
    import dataclasses

    from tempering.data.datamodule import recipe_encoder
    from tempering.recipe import ComponentConfig

    return recipe_encoder(dataclasses.replace(recipe, masking=ComponentConfig("all_assistant")),
                          tokenizer, registry)


def _add_answer_losses(result: dict[str, Any], model: Any, conversations: list[Conversation],
                       recipe: Any, tokenizer: Any, registry: Any) -> None:
    """The teacher-forced loss of the reference answers of every held-out conversation of
    each group (``answer_loss``, also averaged per split): it shows what a model learnt of a
    held-out task long before it answers one exactly."""
    from tempering.train.turn_eval import turn_losses

    encoder = _every_turn_encoder(recipe, tokenizer, registry)
    groups: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)
    for c in conversations:
        if (g := group_of(c)) is not None:
            groups[f"{g[0]}/{g[1]}"].append(c.messages)
    for key, messages in groups.items():
        turns = turn_losses(model, encoder, messages, batch_size=recipe.data.batch_size)["turns"]
        if key in result["by_task"] and turns:
            result["by_task"][key]["answer_loss"] = turns[min(turns)]["loss"]
    for split, entry in result["by_split"].items():
        losses = [v["answer_loss"] for k, v in result["by_task"].items()
                  if split_of(k) == split and "answer_loss" in v]
        if losses:
            entry["answer_loss"] = sum(losses) / len(losses)


def _turn_conversations(dm: Any, recipe: Any) -> list[list[dict[str, Any]]]:
    from tempering.data.sources import BadRecordLog, load_conversations

    if recipe.eval.conversations:
        read = load_conversations(recipe.eval.conversations, dm.pm.hook.format_example,
                                  dm.registry, on_bad_record=recipe.data.on_bad_record,
                                  seed=recipe.train.seed, log=BadRecordLog(),
                                  require_assistant=False)
    else:
        read = dm.val_conversations
    return [c.messages for c in read][:recipe.eval.multi_turn]


def evaluate_turns(model: Any, dm: Any, recipe: Any, tokenizer: Any,
                   registry: Any) -> dict[str, Any] | None:
    """``eval.multi_turn``: per assistant-turn index the teacher-forced loss and perplexity,
    and the share of greedy answers that stop at the end-of-turn and that confuse roles.

    Returns:
        None when not asked; else ``{"conversations", "skipped", "answers", "stop_rate",
        "role_confusion_rate", "role_confusion_kinds", "turns": {k: {loss, perplexity,
        tokens, stop_rate, role_confusion_rate, answers}}, "examples": [...]}``.
    """
    from tempering.train.turn_eval import role_headers, rollout, rollout_summary, turn_losses

    e = recipe.eval
    conversations = _turn_conversations(dm, recipe) if e.multi_turn > 0 else []
    if not conversations:
        return None
    every_turn = _every_turn_encoder(recipe, tokenizer, registry)
    answered = [m for m in conversations if any(x["role"] == "assistant" for x in m)]
    losses = turn_losses(model, every_turn, answered, max_turns=e.max_turns,
                         batch_size=recipe.data.batch_size,
                         max_length=getattr(model.config, "max_position_embeddings", None))
    generator = eval_generator(model, dm, recipe, tokenizer, registry, "Answering turn by turn")
    records = rollout(generator, conversations,
                      GenerationParams(max_new_tokens=e.max_new_tokens),
                      headers=role_headers(dm.encoder))
    summary = rollout_summary(records, e.max_turns)
    turns: dict[int, dict[str, Any]] = {}
    for k in sorted({*losses["turns"], *summary["turns"]}):
        turns[k] = {**losses["turns"].get(k, {}), **summary["turns"].get(k, {})}
    return {"conversations": len(conversations), "skipped": losses["skipped"],
            **{k: v for k, v in summary.items() if k != "turns"}, "turns": turns,
            "examples": records[:64]}
