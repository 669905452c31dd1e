"""Losses at supervised positions only, projected to the vocabulary in chunks.

The full ``[b, s, v]`` logits are never built: hidden states are gathered at the positions whose
next token is supervised, and the LM head runs over them ``chunk_size`` rows at a time under
activation checkpointing, so at most one chunk of logits is alive in forward or backward.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from tempering.encoding import IGNORE_INDEX

__all__ = ["LossOutput", "forward_hidden", "project_logits", "chunked_per_token",
           "supervised_hidden", "supervised_loss"]


@dataclass
class LossOutput:
    """Per-micro-batch loss parts; the module turns them into a correct token mean.

    Attributes:
        loss_sum: sum of per-token losses over this micro-batch's supervised tokens (scalar).
        num_tokens: number of supervised tokens in this micro-batch.
        metrics: extra scalars to log (detached).
    """

    loss_sum: torch.Tensor
    num_tokens: int
    metrics: dict[str, float] = field(default_factory=dict)


def forward_hidden(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """Final hidden states ``[b, s, d]`` of the decoder (no LM head, no KV cache)."""
    decoder = model.get_decoder()
    out = decoder(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        position_ids=batch.get("position_ids"),
        use_cache=False,
    )
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def project_logits(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """Apply the LM head and the model's own logit post-processing (scale, soft-capping)."""
    logits = model.get_output_embeddings()(hidden)
    scale = getattr(model, "logit_scale", None) or getattr(model.config, "logit_scale", None)
    if isinstance(scale, (int, float)) and scale != 1:
        logits = logits * scale
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _chunk(model: Any, objective: Any, options: dict[str, Any], hidden: torch.Tensor,
           targets: torch.Tensor) -> torch.Tensor:
    return objective.per_token(project_logits(model, hidden), targets, None, **options)


def chunked_per_token(
    model: Any,
    objective: Any,
    hidden: torch.Tensor,  # [n, d]
    targets: torch.Tensor,  # [n]
    *,
    chunk_size: int,
    options: dict[str, Any] | None = None,
) -> torch.Tensor:  # [n]
    """The objective's per-token loss, computed ``chunk_size`` positions at a time."""
    fn = functools.partial(_chunk, model, objective, options or {})
    if not torch.is_grad_enabled() or chunk_size <= 0 or hidden.shape[0] <= chunk_size:
        return fn(hidden, targets)
    parts = [
        checkpoint(fn, hidden[i:i + chunk_size], targets[i:i + chunk_size], use_reentrant=False)
        for i in range(0, hidden.shape[0], chunk_size)
    ]
    return torch.cat(parts)


def supervised_hidden(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states ``[n, d]`` at the positions whose next token is trained, and those ``[n]``."""
    targets = batch["labels"][:, 1:]  # [b, s-1]: the token each position predicts
    mask = targets != IGNORE_INDEX
    hidden = forward_hidden(model, batch)  # [b, s, d]
    return hidden[:, :-1][mask], targets[mask]


def supervised_loss(module: Any, batch: dict[str, Any]) -> LossOutput:
    """The recipe's objective summed over supervised positions of one micro-batch."""
    hidden, targets = supervised_hidden(module.model, batch)
    per_token = chunked_per_token(
        module.model, module.objective, hidden, targets,
        chunk_size=module.loss_chunk_size, options=module.objective_options,
    )
    return LossOutput(per_token.sum(), int(targets.numel()))
