"""Built-in objectives: a loss per supervised position.

``cross_entropy`` trains on the data's labels. The distillation objectives compare the
student's next-token distribution with a frozen teacher's at the same positions (the framework
projects both in the same chunks): ``hard_ce`` (cross-entropy on the teacher's argmax),
``soft_kl`` (forward KL, Hinton et al. 2015), ``reverse_kl``, ``jsd`` (the generalized
Jensen-Shannon divergence of GKD, Agarwal et al. 2024) and ``tvd`` (total variation). Each
takes ``alpha``: ``alpha * cross_entropy + (1 - alpha) * distillation``.

Everything is computed in float32 log space from the chunk's logits (``log_softmax``, never an
``exp`` of a raw logit), so bf16 logits of any magnitude give finite losses; a token the
teacher gives probability 0 (a ``-inf`` logit) contributes 0, with no NaN in the loss or its
gradient.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from tempering import Objective, hookimpl

if TYPE_CHECKING:  # torch loads when a loss is computed, not when plugins are listed
    import torch

__all__ = ["cross_entropy", "hard_ce", "soft_kl", "reverse_kl", "jsd", "tvd"]


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


def _check(temperature: float, alpha: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    import torch

    return torch.log_softmax(logits.float() / temperature, dim=-1)


_FLOOR = -1.0e4  # log-probabilities are clamped here: e^-10000 is 0 in every float type


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:  # [n]
    """KL(p || q) per row from log-probabilities. Terms where p is 0 are 0 (and have no NaN
    gradient); a q of 0 where p is not counts as e^-10000, a large finite loss, not inf."""
    import torch

    p = log_p.exp()
    finite_log_p = torch.where(p > 0, log_p, torch.zeros_like(log_p))
    return (p * (finite_log_p - log_q.clamp(min=_FLOOR))).sum(-1)


def _mix(kd: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor,
         alpha: float) -> torch.Tensor:
    if alpha == 0:
        return kd
    return alpha * cross_entropy(student_logits, labels) + (1 - alpha) * kd


def _teacher(teacher_logits: torch.Tensor | None, name: str) -> torch.Tensor:
    if teacher_logits is None:
        raise ValueError(f"objective {name!r} needs teacher logits (recipe key teacher)")
    return teacher_logits


def hard_ce(student_logits: torch.Tensor, labels: torch.Tensor,
            teacher_logits: torch.Tensor | None = None, *, alpha: float = 0.0) -> torch.Tensor:
    """Cross-entropy on the teacher's most likely token."""
    _check(1.0, alpha)
    target = _teacher(teacher_logits, "hard_ce").argmax(-1)
    return _mix(cross_entropy(student_logits, target), student_logits, labels, alpha)


def soft_kl(student_logits: torch.Tensor, labels: torch.Tensor,
            teacher_logits: torch.Tensor | None = None, *, temperature: float = 1.0,
            alpha: float = 0.0) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) * T^2."""
    _check(temperature, alpha)
    log_t = _log_probs(_teacher(teacher_logits, "soft_kl"), temperature)
    kd = _kl(log_t, _log_probs(student_logits, temperature)) * temperature ** 2
    return _mix(kd, student_logits, labels, alpha)


def reverse_kl(student_logits: torch.Tensor, labels: torch.Tensor,
               teacher_logits: torch.Tensor | None = None, *, temperature: float = 1.0,
               alpha: float = 0.0) -> torch.Tensor:
    """KL(softmax(s/T) || softmax(t/T)) * T^2."""
    _check(temperature, alpha)
    log_t = _log_probs(_teacher(teacher_logits, "reverse_kl"), temperature)
    kd = _kl(_log_probs(student_logits, temperature), log_t) * temperature ** 2
    return _mix(kd, student_logits, labels, alpha)


def jsd(student_logits: torch.Tensor, labels: torch.Tensor,
        teacher_logits: torch.Tensor | None = None, *, beta: float = 0.5,
        temperature: float = 1.0, alpha: float = 0.0) -> torch.Tensor:
    """Generalized JSD: with m = beta * p_teacher + (1 - beta) * p_student,
    beta * KL(p_teacher || m) + (1 - beta) * KL(p_student || m), times T^2. As in GKD,
    beta = 0 is forward KL(p_teacher || p_student) and beta = 1 reverse KL (the mixture form
    itself vanishes at both ends)."""
    import torch

    _check(temperature, alpha)
    if not 0 <= beta <= 1:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    log_t = _log_probs(_teacher(teacher_logits, "jsd"), temperature)
    log_s = _log_probs(student_logits, temperature)
    if beta == 0:
        kd = _kl(log_t, log_s)
    elif beta == 1:
        kd = _kl(log_s, log_t)
    else:
        log_m = torch.logaddexp(log_t + math.log(beta), log_s + math.log(1 - beta))
        kd = beta * _kl(log_t, log_m) + (1 - beta) * _kl(log_s, log_m)
    return _mix(kd * temperature ** 2, student_logits, labels, alpha)


def tvd(student_logits: torch.Tensor, labels: torch.Tensor,
        teacher_logits: torch.Tensor | None = None, *, temperature: float = 1.0,
        alpha: float = 0.0) -> torch.Tensor:
    """Total variation distance 0.5 * sum |p_teacher - p_student| (in [0, 1]; not scaled by
    T^2)."""
    _check(temperature, alpha)
    p_t = _log_probs(_teacher(teacher_logits, "tvd"), temperature).exp()
    p_s = _log_probs(student_logits, temperature).exp()
    return _mix(0.5 * (p_t - p_s).abs().sum(-1), student_logits, labels, alpha)


@hookimpl
def register_objectives() -> list[Objective]:
    return [
        Objective("cross_entropy", cross_entropy, description="token-level cross-entropy"),
        Objective("hard_ce", hard_ce, needs_teacher=True,
                  description="cross-entropy on the teacher's argmax token"),
        Objective("soft_kl", soft_kl, needs_teacher=True,
                  description="forward KL to the teacher's softened distribution, times T^2"),
        Objective("reverse_kl", reverse_kl, needs_teacher=True,
                  description="reverse KL (student || teacher), times T^2"),
        Objective("jsd", jsd, needs_teacher=True,
                  description="GKD's generalized Jensen-Shannon divergence (beta)"),
        Objective("tvd", tvd, needs_teacher=True,
                  description="total variation distance to the teacher"),
    ]
