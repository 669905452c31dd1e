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

from tempering.chat.encoding import IGNORE_INDEX

__all__ = ["LossOutput", "forward_hidden", "project_logits", "chunked_per_token",
           "supervised_hidden", "supervised_loss"]


@dataclass
class LossOutput:
    """Per-micro-batch loss parts; the module turns them into a correct token mean.

    Attributes:
        loss_sum: sum of per-token losses over this micro-batch's supervised tokens (scalar).
        num_tokens: number of supervised tokens in this micro-batch.
        metrics: extra scalars to log (detached).
        nll_sum: the plain next-token NLL summed over the same tokens, when the loss hook
            computed it (validation); perplexity is exp of its token mean. None: the module
            computes it itself.
    """

    loss_sum: torch.Tensor
    num_tokens: int
    metrics: dict[str, float] = field(default_factory=dict)
    nll_sum: torch.Tensor | None = None


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
    """Apply the LM head and the config-driven logit post-processing of the model's own forward.

    Anything else a forward does to its logits is caught by ``tempering.train.logit_check``.
    """
    config = model.config.get_text_config(decoder=True)
    divisor = getattr(config, "logits_mup_width_multiplier", None)  # Inkling: hidden / it
    logits = model.get_output_embeddings()(hidden / divisor if divisor else hidden)
    # Cohere, Cohere2, Cohere2Moe, CohereCompass: logits * logit_scale
    scale = getattr(model, "logit_scale", None) or getattr(config, "logit_scale", None)
    if isinstance(scale, (int, float)) and scale != 1:
        logits = logits * scale
    # Granite, GraniteSWA, GraniteMoe(SWA, Shared, Hybrid): logits / logits_scaling; MiniCPM3
    # divides its hidden states by it (the same for its bias-free head); HyperCLOVAX multiplies.
    scaling = getattr(config, "logits_scaling", None)
    if scaling and scaling != 1:
        logits = logits * scaling if config.model_type == "hyperclovax" else logits / scaling
    # FalconH1: logits * lm_head_multiplier
    multiplier = getattr(config, "lm_head_multiplier", None)
    if multiplier and multiplier != 1:
        logits = logits * multiplier
    # tanh soft-capping: final_logit_softcapping (Gemma 2/3/3n/4, VaultGemma, NanoChat, Beam,
    # Inkling2), logits_soft_cap (RecurrentGemma), output_logit_soft_cap (xLSTM)
    for name in ("final_logit_softcapping", "logits_soft_cap", "output_logit_soft_cap"):
        cap = getattr(config, name, None)
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
    """The objective's per-token loss, computed ``chunk_size`` positions at a time.

    With gradients each chunk runs under activation checkpointing; without them (validation)
    the chunks simply run one after another: either way one chunk of logits is alive at a time.
    """
    fn = functools.partial(_chunk, model, objective, options or {})
    if chunk_size <= 0 or hidden.shape[0] <= chunk_size:
        return fn(hidden, targets)
    if not torch.is_grad_enabled():
        return torch.cat([fn(hidden[i:i + chunk_size], targets[i:i + chunk_size])
                          for i in range(0, hidden.shape[0], chunk_size)])
    parts = [
        checkpoint(fn, hidden[i:i + chunk_size], targets[i:i + chunk_size], use_reentrant=False)
        for i in range(0, hidden.shape[0], chunk_size)
    ]
    return torch.cat(parts)


def _eval_sums(model: Any, objective: Any, options: dict[str, Any], hidden: torch.Tensor,
               targets: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Objective sum and plain NLL sum from the same logits, chunk by chunk (no gradients)."""
    loss = hidden.new_zeros((), dtype=torch.float32)
    nll = hidden.new_zeros((), dtype=torch.float32)
    step = chunk_size if chunk_size > 0 else max(1, hidden.shape[0])
    for i in range(0, hidden.shape[0], step):
        logits = project_logits(model, hidden[i:i + step])  # [c, v]
        loss = loss + objective.per_token(logits, targets[i:i + step], None, **options).sum()
        nll = nll + torch.nn.functional.cross_entropy(logits.float(), targets[i:i + step],
                                                      reduction="sum")
    return loss, nll


def supervised_hidden(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states ``[n, d]`` at the positions whose next token is trained, and those ``[n]``."""
    targets = batch["labels"][:, 1:]  # [b, s-1]: the token each position predicts
    mask = targets != IGNORE_INDEX
    hidden = forward_hidden(model, batch)  # [b, s, d]
    return hidden[:, :-1][mask], targets[mask]


def supervised_loss(module: Any, batch: dict[str, Any]) -> LossOutput:
    """The recipe's objective summed over supervised positions of one micro-batch."""
    hidden, targets = supervised_hidden(module.model, batch)
    if not torch.is_grad_enabled():  # validation: the plain NLL comes from the same logits
        loss, nll = _eval_sums(module.model, module.objective, module.objective_options, hidden,
                               targets, module.loss_chunk_size)
        return LossOutput(loss, int(targets.numel()), nll_sum=nll)
    per_token = chunked_per_token(
        module.model, module.objective, hidden, targets,
        chunk_size=module.loss_chunk_size, options=module.objective_options,
    )
    return LossOutput(per_token.sum(), int(targets.numel()))
