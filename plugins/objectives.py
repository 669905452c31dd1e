"""Built-in objectives: a loss per supervised position."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tempering import Objective, hookimpl

if TYPE_CHECKING:  # torch loads when a loss is computed, not when plugins are listed
    import torch

__all__ = ["cross_entropy"]


def cross_entropy(
    student_logits: torch.Tensor,  # [n, v]
    labels: torch.Tensor,  # [n]
    teacher_logits: torch.Tensor | None = None,
    *,
    label_smoothing: float = 0.0,
) -> torch.Tensor:  # [n]
    """Negative log-likelihood of the label, computed in float32."""
    import torch.nn.functional as F

    return F.cross_entropy(
        student_logits.float(), labels, reduction="none", label_smoothing=label_smoothing
    )


@hookimpl
def register_objectives() -> list[Objective]:
    return [Objective("cross_entropy", cross_entropy, description="token-level cross-entropy")]
