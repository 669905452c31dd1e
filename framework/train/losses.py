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
from tempering.train.packed_attention import NAME as DOCUMENTS
from tempering.train.packed_attention import document_bounds

__all__ = ["LossContext", "LossOutput", "forward_hidden", "project_logits", "chunked_per_token",
           "supervised_positions", "supervised_hidden", "token_nll", "chunk_rows", "vocab_size",
           "common_vocab", "dense_logprobs", "teacher_logits_for", "TAILS"]

TAILS = ("uniform", "renormalize")  # a cached teacher's mass outside its top k


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


@dataclass
class LossContext:
    """What ``compute_loss`` gets from the run (not the LightningModule itself).

    Attributes:
        model: the policy (the model being trained), in its training or eval mode.
        objective: the recipe's :class:`tempering.Objective`.
        options: the objective's recipe options (keyword arguments of ``per_token``).
        chunk_size: supervised positions projected to the vocabulary at a time (0: all).
        teacher: the frozen teacher model (role ``teacher``) when the objective needs one and
            it runs online (None when its top-k is cached: ``train.teacher_top_k``).
        teacher_tail: with a cached teacher, the policy for its mass outside the top k.
    """

    model: Any
    objective: Any
    options: dict[str, Any] = field(default_factory=dict)
    chunk_size: int = 0
    teacher: Any = None
    teacher_tail: str = "uniform"


def forward_hidden(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """Final hidden states ``[b, s, d]`` of the decoder (no LM head, no KV cache)."""
    decoder = model.get_decoder()
    extra = {}
    if batch.get("position_ids") is not None and batch.get("attention_mask") is None \
            and model.config._attn_implementation == DOCUMENTS:  # packed: each document alone
        extra["document_bounds"] = document_bounds(batch["position_ids"])
    out = decoder(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        position_ids=batch.get("position_ids"),
        use_cache=False,
        **extra,
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


def vocab_size(model: Any) -> int:
    """Rows of the model's output layer, from its config (also when its weights are sharded)."""
    return int(model.config.get_text_config(decoder=True).vocab_size)


def chunk_rows(size: int | None, budget_mb: float, vocabularies: list[int]) -> int:
    """Positions per loss chunk: ``size`` when given (0: all), else as many as keep one chunk's
    float32 logits of every model (policy, teacher) within ``budget_mb``."""
    if size is not None:
        return size
    return max(1, int(budget_mb * 2**20) // (4 * max(1, sum(vocabularies))))


def common_vocab(logits: torch.Tensor, teacher_logits: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Both models' logits over the rows they share: a teacher whose embedding matrix is only
    padded larger (152064 vs 151936 rows) has padding rows no token uses (the tokenizers
    were checked to be the same before training)."""
    if teacher_logits is None or teacher_logits.shape[-1] == logits.shape[-1]:
        return logits, teacher_logits
    v = min(logits.shape[-1], teacher_logits.shape[-1])
    return logits[..., :v], teacher_logits[..., :v]


def dense_logprobs(ids: torch.Tensor, logprobs: torch.Tensor, vocab: int,
                   tail: str = "uniform") -> torch.Tensor:  # [n, vocab] float32
    """A full log-probability row per position from its top-k entries and the tail policy."""
    lp = logprobs.float()
    n, k = lp.shape
    if tail == "renormalize":
        lp = lp - torch.logsumexp(lp, dim=-1, keepdim=True)
        out = torch.full((n, vocab), float("-inf"), dtype=torch.float32, device=lp.device)
    elif tail == "uniform":
        rest = (1 - lp.exp().sum(-1)).clamp(min=1e-12) / max(1, vocab - k)
        out = rest.log().unsqueeze(-1).expand(n, vocab).contiguous()
    else:
        raise ValueError(f"train.teacher_tail: {tail!r} is not one of {', '.join(TAILS)}")
    return out.scatter(-1, ids.long(), lp)


def token_nll(logits: torch.Tensor, targets: torch.Tensor, teacher_logits: Any = None
              ) -> torch.Tensor:  # [n]
    """Plain next-token negative log-likelihood, in float32 (perplexity is exp of its mean)."""
    return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")


def teacher_logits_for(logits: torch.Tensor, teacher: Any = None,
                       teacher_hidden: torch.Tensor | None = None,
                       topk: tuple[torch.Tensor, torch.Tensor, str] | None = None
                       ) -> torch.Tensor | None:
    """The teacher's logits for one chunk of the policy's ``logits``: projected from its
    hidden states (online), rebuilt from its cached top-k (``topk``: ids, log-probabilities,
    tail policy), or None without a teacher."""
    if teacher_hidden is not None:
        with torch.no_grad():
            return project_logits(teacher, teacher_hidden)
    if topk is not None:
        return dense_logprobs(topk[0], topk[1], logits.shape[-1], topk[2])
    return None


def _chunk(model: Any, per_token: Any, options: dict[str, Any], teacher: Any, tail: str,
           hidden: torch.Tensor, targets: torch.Tensor,
           teacher_hidden: torch.Tensor | None = None, topk_ids: torch.Tensor | None = None,
           topk_logprobs: torch.Tensor | None = None) -> torch.Tensor:
    logits = project_logits(model, hidden)
    topk = None if topk_ids is None or topk_logprobs is None else (topk_ids, topk_logprobs, tail)
    logits, teacher_logits = common_vocab(
        logits, teacher_logits_for(logits, teacher, teacher_hidden, topk))
    return per_token(logits, targets, teacher_logits, **options)


def chunked_per_token(
    model: Any,
    per_token: Any,
    hidden: torch.Tensor,  # [n, d]
    targets: torch.Tensor,  # [n]
    *,
    chunk_size: int,
    options: dict[str, Any] | None = None,
    teacher: Any = None,
    teacher_hidden: torch.Tensor | None = None,  # [n, d_teacher]
    teacher_topk: tuple[torch.Tensor, torch.Tensor, str] | None = None,  # [n, k] ids, logprobs
) -> torch.Tensor:  # [n]
    """``per_token(logits, targets, teacher_logits, **options)`` computed ``chunk_size``
    positions at a time; the teacher's hidden states (when given) are projected by its own LM
    head in the same chunks, so one chunk of each model's logits is alive at a time.

    With gradients each chunk runs under activation checkpointing; without them (validation)
    the chunks simply run one after another. A cached teacher (``teacher_topk``: its top-k
    ids and log-probabilities per position, and the tail policy) is rebuilt chunk by chunk.
    """
    ids, lps, tail = teacher_topk if teacher_topk is not None else (None, None, "uniform")
    fn = functools.partial(_chunk, model, per_token, options or {}, teacher, tail)
    n = hidden.shape[0]
    if chunk_size <= 0 or n <= chunk_size:
        return fn(hidden, targets, teacher_hidden, ids, lps)

    def part(x: torch.Tensor | None, i: int) -> torch.Tensor | None:
        return None if x is None else x[i:i + chunk_size]

    pieces = [(hidden[i:i + chunk_size], targets[i:i + chunk_size], part(teacher_hidden, i),
               part(ids, i), part(lps, i)) for i in range(0, n, chunk_size)]
    if not torch.is_grad_enabled():
        return torch.cat([fn(*piece) for piece in pieces])
    return torch.cat([checkpoint(fn, *piece, use_reentrant=False) for piece in pieces])


def supervised_positions(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``[b, s-1]`` mask of positions whose next token is trained, and those ``[n]`` tokens."""
    targets = batch["labels"][:, 1:]  # [b, s-1]: the token each position predicts
    mask = targets != IGNORE_INDEX
    return mask, targets[mask]


def supervised_hidden(model: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states ``[n, d]`` at the positions whose next token is trained, and those ``[n]``."""
    mask, targets = supervised_positions(batch)
    hidden = forward_hidden(model, batch)  # [b, s, d]
    return hidden[:, :-1][mask], targets
