"""Built-in sample filters. Each sees the whole candidate pool (what earlier filters kept) and
returns one keep flag per sample; recipes list them in the order they apply."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from tempering import SampleFilter, hookimpl

__all__ = ["register_sample_filters"]

Pool = Sequence[dict[str, Any]]


def _by_prompt(pool: Pool) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, sample in enumerate(pool):
        groups[sample["prompt_id"]].append(i)
    return groups


def _score(sample: dict[str, Any]) -> float:
    if sample.get("score") is None:
        raise ValueError("needs scored samples; put a score stage before this filter")
    return float(sample["score"])


def _best_first(pool: Pool, indices: list[int]) -> list[int]:
    """By score, highest first (unscored samples: generation order)."""
    if any(pool[i].get("score") is None for i in indices):
        return list(indices)
    return sorted(indices, key=lambda i: -_score(pool[i]))


def top_k_per_prompt(pool: Pool, k: int = 1) -> list[bool]:
    """The ``k`` highest-scoring samples of each prompt."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    for sample in pool:
        _score(sample)
    keep = [False] * len(pool)
    for indices in _by_prompt(pool).values():
        for i in _best_first(pool, indices)[:k]:
            keep[i] = True
    return keep


def best_of_n(pool: Pool) -> list[bool]:
    """The highest-scoring sample of each prompt (the first of equals)."""
    return top_k_per_prompt(pool, 1)


def threshold(pool: Pool, min_score: float = 1.0, max_score: float | None = None) -> list[bool]:
    """Samples scoring at least ``min_score`` (and at most ``max_score``)."""
    return [_score(s) >= min_score and (max_score is None or _score(s) <= max_score) for s in pool]


def margin(pool: Pool, margin: float = 0.0) -> list[bool]:
    """Samples that beat their prompt's mean score by more than ``margin`` (a prompt whose
    samples all score the same keeps none: nothing tells them apart)."""
    keep = [False] * len(pool)
    for indices in _by_prompt(pool).values():
        mean = sum(_score(pool[i]) for i in indices) / len(indices)
        for i in indices:
            keep[i] = _score(pool[i]) - mean > margin
    return keep


def _shingles(text: str, n: int) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


def dedup(pool: Pool, similarity: float | None = 0.9, ngram: int = 3,
          scope: str = "prompt") -> list[bool]:
    """Drop duplicates, keeping the best-scoring copy (the first, unscored): exact ones (same text, whitespace
    collapsed) and, unless ``similarity`` is None, near ones (Jaccard similarity of word
    ``ngram`` sets at least ``similarity``), within each prompt or across the whole pool."""
    if scope not in ("prompt", "pool"):
        raise ValueError(f"scope must be 'prompt' or 'pool', got {scope!r}")
    groups = _by_prompt(pool) if scope == "prompt" else {"": list(range(len(pool)))}
    keep = [False] * len(pool)
    for indices in groups.values():
        seen: set[str] = set()
        kept: list[set[tuple[str, ...]]] = []
        for i in _best_first(pool, indices):
            text = " ".join(pool[i]["text"].split())
            grams = _shingles(text, ngram)
            if text in seen or (similarity is not None and any(
                    len(grams & g) / max(1, len(grams | g)) >= similarity for g in kept)):
                continue
            seen.add(text)
            kept.append(grams)
            keep[i] = True
    return keep


def length(pool: Pool, min_tokens: int = 1, max_tokens: int | None = None,
           drop_unfinished: bool = True) -> list[bool]:
    """Samples of ``min_tokens`` to ``max_tokens`` generated tokens; with ``drop_unfinished``,
    not those cut off by the token budget (``finish_reason: length``)."""
    return [s["num_tokens"] >= min_tokens and (max_tokens is None or s["num_tokens"] <= max_tokens)
            and not (drop_unfinished and s["finish_reason"] == "length") for s in pool]


@hookimpl
def register_sample_filters() -> list[SampleFilter]:
    return [
        SampleFilter("best_of_n", best_of_n, "the best sample of each prompt"),
        SampleFilter("top_k_per_prompt", top_k_per_prompt, "the k best samples of each prompt"),
        SampleFilter("threshold", threshold, "samples scoring at least min_score"),
        SampleFilter("margin", margin, "samples beating their prompt's mean score by a margin"),
        SampleFilter("dedup", dedup, "exact and near-duplicate samples dropped"),
        SampleFilter("length", length, "samples within a token range, finished"),
    ]
