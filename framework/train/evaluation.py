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


def group_of(conversation: Conversation) -> str | None:
    """``split/task`` of a mixture's held-out conversation (the split names its number of
    exemplars when it has some: ``held_out_tasks@2shot/subtraction``), None for other data."""
    tags = conversation.tags
    if "split" not in tags:
        return None
    shots = tags.get("shots") or 0
    split = f"{tags['split']}@{shots}shot" if shots else tags["split"]
    return f"{split}/{tags['task']}"


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


def _by_split(by_task: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each split's scores: every score's mean over the split's tasks that have it (a macro
    mean), and ``tasks``, how many tasks the split has."""
    tasks: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for key, values in by_task.items():
        tasks[split_of(key)].append(values)
    out = {}
    for split, entries in tasks.items():
        names = {n for e in entries for n in e if n != "n"}
        out[split] = {n: sum(e[n] for e in entries if n in e) / sum(n in e for e in entries)
                      for n in sorted(names)}
        out[split]["tasks"] = len(entries)
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
    grouped = [(g, row) for c, row in zip(items, rows, strict=True)
               if (g := group_of(c)) is not None]
    by_task = _means(grouped, names)
    shown: dict[Any, int] = defaultdict(int)
    examples: list[dict[str, Any]] = []
    for c, a, r in zip(items, answers, references, strict=True):
        key = group_of(c)
        if len(examples) < (8 if key is None else 64) and shown[key] < (8 if key is None else 1):
            shown[key] += 1
            examples.append({"prompt": c.messages[-2]["content"], "reference": r, "answer": a,
                             **({"group": key} if key else {})})
    return {"scores": scores, "samples": len(items), "examples": examples, "by_task": by_task,
            "by_split": _by_split(by_task)}


def eval_generator(model: Any, dm: Any, recipe: Any, tokenizer: Any, registry: Any,
                   progress: str) -> Generator:
    """The recipe's ``eval.generator`` over ``model``, stopping at the trained end-of-turn
    tokens and the model's EOS ids (its generation config holds both by now)."""
    from tempering.generate import HFGenerator
    from tempering.generate.hf import stop_token_ids

    sample = next((c.messages for c in dm.val_conversations
                   if c.messages[-1]["role"] == "assistant"), None)
    stops = stop_token_ids(tokenizer, model, dm.encoder, sample)
    backend = registry.get("generator", recipe.eval.generator.name)
    generator = backend.build(GenerationContext(model, tokenizer, dm.encoder, tuple(stops)),
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
            groups[g].append(c.messages)
    for key, messages in groups.items():
        turns = turn_losses(model, encoder, messages, batch_size=recipe.data.batch_size)["turns"]
        if key in result["by_task"] and turns:
            result["by_task"][key]["answer_loss"] = turns[min(turns)]["loss"]
    result["by_split"] = _by_split(result["by_task"])


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
    if e.multi_turn <= 0:
        return None
    conversations = [c.messages for c in dm.turn_conversations()][:e.multi_turn]
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
    skipped = dict(dm.turn_bad_records.counts)
    return {"conversations": len(conversations), "skipped": losses["skipped"],
            **({"skipped_records": skipped} if skipped else {}),
            **{k: v for k, v in summary.items() if k != "turns"}, "turns": turns,
            "examples": records[:64]}
