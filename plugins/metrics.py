"""Built-in metrics of generated answers against references."""

from __future__ import annotations

from tempering import Metric, hookimpl

__all__ = ["register_metrics"]


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the answer is the reference exactly (both stripped of surrounding space)."""
    return float(prediction.strip() == reference.strip())


@hookimpl
def register_metrics() -> list[Metric]:
    return [Metric("exact_match", exact_match, "answer == reference (stripped)")]
