"""Held-out evaluation by generation: answers to the last user turns, scored by metrics."""

from __future__ import annotations

from typing import Any

from tempering.data.sources import Conversation
from tempering.generate.base import GenerationParams, Generator

__all__ = ["evaluate_answers"]


def evaluate_answers(generator: Generator, conversations: list[Conversation],
                     metrics: list[tuple[Any, dict[str, Any]]], *, params: GenerationParams,
                     limit: int) -> dict[str, Any]:
    """Answer the last user turn of up to ``limit`` conversations that end with an assistant
    turn; each metric (a :class:`tempering.Metric` with its options) is the mean of its score
    of the stripped answer against the stripped reference.

    Returns:
        ``{"scores": {metric: mean or None}, "samples": n, "examples": [...first 8]}``.
    """
    items = [c for c in conversations if c.messages[-1]["role"] == "assistant"][:limit]
    if not items:
        return {"scores": {m.name: None for m, _ in metrics}, "samples": 0, "examples": []}
    completions = generator.generate([c.messages[:-1] for c in items], params)
    answers = [c[0].text.strip() for c in completions]
    references = [c.messages[-1]["content"].strip() for c in items]
    scores = {m.name: sum(float(m.score(a, r, **options)) for a, r in
                          zip(answers, references, strict=True)) / len(items)
              for m, options in metrics}
    examples = [{"prompt": c.messages[-2]["content"], "reference": r, "answer": a}
                for c, a, r in zip(items[:8], answers, references, strict=False)]
    return {"scores": scores, "samples": len(items), "examples": examples}
