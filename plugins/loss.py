"""Built-in ``compute_loss``: the recipe's objective at supervised positions, chunked.

Hidden states are gathered only where the next token is trained and projected to the
vocabulary a chunk at a time (the full ``[b, s, v]`` logits are never built). With a teacher the
teacher's hidden states are gathered at the same positions and projected in the same chunks.
In validation the plain NLL (for perplexity) comes from the same logits as the objective.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tempering import hookimpl

if TYPE_CHECKING:  # torch loads when a loss is computed, not when plugins are listed
    import torch

    from tempering import Batch, LossContext, LossOutput

__all__ = ["compute_loss"]


def _teacher_hidden(context: LossContext, batch: Batch, mask: torch.Tensor) -> Any:
    import torch

    from tempering import forward_hidden

    if not context.objective.needs_teacher or "teacher_topk_ids" in batch:
        return None
    with torch.no_grad():
        return forward_hidden(context.teacher, batch)[:, :-1][mask]


def _cached(context: LossContext, batch: Batch) -> Any:
    """The cached teacher's top-k of every position, with the tail policy (None: online)."""
    if "teacher_topk_ids" not in batch:
        return None
    return batch["teacher_topk_ids"], batch["teacher_topk_logprobs"], context.teacher_tail


def _eval_sums(context: LossContext, hidden: torch.Tensor, targets: torch.Tensor,
               teacher_hidden: Any, cached: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Objective sum and plain NLL sum from the same logits, chunk by chunk (no gradients)."""
    import torch

    from tempering import common_vocab, project_logits, teacher_logits_for, token_nll

    loss = hidden.new_zeros((), dtype=torch.float32)
    nll = hidden.new_zeros((), dtype=torch.float32)
    step = context.chunk_size if context.chunk_size > 0 else max(1, hidden.shape[0])
    for i in range(0, hidden.shape[0], step):
        logits = project_logits(context.model, hidden[i:i + step])  # [c, v]
        teacher = teacher_logits_for(
            logits, context.teacher, None if teacher_hidden is None else teacher_hidden[i:i + step],
            None if cached is None else (cached[0][i:i + step], cached[1][i:i + step], cached[2]))
        part = targets[i:i + step]
        shared, teacher = common_vocab(logits, teacher)
        loss = loss + context.objective.per_token(shared, part, teacher, **context.options).sum()
        nll = nll + token_nll(logits, part).sum()
    return loss, nll


@hookimpl(trylast=True)
def compute_loss(context: LossContext, batch: Batch) -> LossOutput:
    import torch

    from tempering import (
        LossOutput,
        chunked_per_token,
        forward_hidden,
        supervised_positions,
    )

    mask, targets = supervised_positions(batch)
    hidden = forward_hidden(context.model, batch)[:, :-1][mask]  # [n, d]
    teacher_hidden = _teacher_hidden(context, batch, mask)
    cached = _cached(context, batch)
    if not torch.is_grad_enabled():  # validation: the plain NLL comes from the same logits
        loss, nll = _eval_sums(context, hidden, targets, teacher_hidden, cached)
        return LossOutput(loss, int(targets.numel()), nll_sum=nll)
    per_token = chunked_per_token(
        context.model, context.objective.per_token, hidden, targets,
        chunk_size=context.chunk_size, options=context.options, teacher=context.teacher,
        teacher_hidden=teacher_hidden, teacher_topk=cached)
    return LossOutput(per_token.sum(), int(targets.numel()))
