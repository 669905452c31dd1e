"""The optimizer: AdamW parameter groups decided on the unwrapped model, and a refusal to train
low-precision weights whose updates would round away.

Weight decay groups are decided once from the model as loaded (names and shapes), not from the
parameters the optimizer later sees: under FSDP with ``use_orig_params`` every parameter there
is already a 1-D shard, so a shape rule would put everything in the no-decay group.

Pure bf16/fp16 weights (``precision: bf16-true``, or ``model.dtype: bfloat16``) hold no fp32
master copy: an AdamW step moves each weight by about the learning rate, and when that is below
half the spacing of representable numbers around the weight, the update is rounded away. At
lr 1e-5 that is most N(0, 0.02) weights and every norm weight (values near 1). The check adds
the peak learning rate to every trainable low-precision weight in its own dtype and counts the
weights that do not change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["LostUpdatesError", "clean_name", "no_decay_names", "decay_groups",
           "check_update_precision", "grad_norm"]

_WRAPPER_PARTS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod")
_LOW_PRECISION = (torch.bfloat16, torch.float16)
# Refuse when more than this fraction of the trainable low-precision weights would not move.
MAX_LOST_FRACTION = 0.10


class LostUpdatesError(ValueError):
    """Training would round away the optimizer's updates."""


def clean_name(name: str) -> str:
    """A parameter name without the prefixes FSDP, activation checkpointing or compile add."""
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_PARTS)


def no_decay_names(model: torch.nn.Module) -> set[str]:
    """Names of the parameters that get no weight decay: norms, biases and other 1-D ones.

    A ZeRO-3 partition is a flat tensor on every rank: its shape is the whole tensor's
    ``ds_shape``."""
    return {clean_name(n) for n, p in model.named_parameters()
            if len(getattr(p, "ds_shape", p.shape)) < 2 or "norm" in n.lower()}


def decay_groups(named: Iterable[tuple[str, torch.nn.Parameter]], no_decay: set[str],
                 known: set[str], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups for ``named`` (possibly wrapped) parameters."""
    decay: list[torch.nn.Parameter] = []
    plain: list[torch.nn.Parameter] = []
    for name, p in named:
        if not p.requires_grad:
            continue
        key = clean_name(name)
        if key not in known:
            raise ValueError(f"parameter {name!r} ({key!r}) is not a parameter of the model as "
                             "loaded; cannot decide its weight-decay group")
        (plain if key in no_decay else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": plain, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]  # DeepSpeed drops empty groups, the scheduler not


def check_update_precision(named: Iterable[tuple[str, torch.nn.Parameter]], lr: float,
                           reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
                           ) -> list[str]:
    """Raise :class:`LostUpdatesError` when an update of ``lr`` rounds away for too many weights.

    Args:
        named: the model's named parameters (shards under FSDP).
        lr: the peak learning rate.
        reduce: sums a tensor over ranks (so every rank takes the same decision).

    Returns:
        The (clean) names of the low-precision tensors on this rank for which most updates
        would round away although the model as a whole passes (norm weights near 1 at lr 1e-4):
        worth a warning.
    """
    counts = torch.zeros(2, dtype=torch.float64)  # [lost, total] low-precision weights
    dtypes, frozen = set(), []
    with torch.no_grad():
        for name, p in named:
            if p.requires_grad and p.dtype in _LOW_PRECISION and p.numel():
                lost = int(((p + lr) == p).sum())
                counts += torch.tensor([lost, p.numel()], dtype=torch.float64)
                dtypes.add(str(p.dtype).replace("torch.", ""))
                if lost > p.numel() / 2:
                    frozen.append(clean_name(name))
    if reduce is not None:
        counts = reduce(counts).cpu()
    lost_all, total = float(counts[0]), float(counts[1])
    if total == 0 or lost_all / total <= MAX_LOST_FRACTION:
        return frozen
    raise LostUpdatesError(
        f"optim.lr {lr:g} is too small for {'/'.join(sorted(dtypes)) or 'low-precision'} weights "
        f"without fp32 master weights: an update of that size rounds away for "
        f"{lost_all / total:.1%} of the {int(total):,} trainable weights. Keep fp32 weights with "
        "mixed precision (model.dtype: float32 and trainer.precision: bf16-mixed), or raise the "
        "learning rate")


def grad_norm(params: Iterable[torch.nn.Parameter],
              reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The L2 norm of all gradients; ``reduce`` sums squares over ranks when each holds a shard."""
    squares = [p.grad.detach().float().pow(2).sum() for p in params if p.grad is not None]
    total = torch.stack(squares).sum() if squares else torch.zeros(())
    if reduce is not None:
        total = reduce(total)
    return total.sqrt()
