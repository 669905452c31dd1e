"""The micro-batch contract between the DataModule and the LightningModule."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["Batch", "BATCH_KEYS"]


class _BatchRequired(TypedDict):
    input_ids: Tensor
    """``[b, s]`` token ids; padding is the tokenizer's pad id (EOS when it has none)."""
    labels: Tensor
    """``[b, s]``: ``input_ids`` where trained, -100 elsewhere (padding, prompts, markup). The
    loss at position ``t`` predicts ``labels[t + 1]``."""
    num_tokens: Tensor
    """Scalar: real (non-padding) tokens in this micro-batch."""
    num_supervised: Tensor
    """Scalar: trained labels (``labels != -100``) in this micro-batch."""
    num_padding: Tensor
    """Scalar: padding positions in this micro-batch."""


class Batch(_BatchRequired, total=False):
    """One micro-batch as the DataModule serves it and ``compute_loss`` receives it.

    Packed rows carry ``position_ids`` (restarting at 0 for each conversation, which keeps
    attention inside a conversation); unpacked rows carry ``attention_mask``. Training
    micro-batches also carry the ``num_window_*`` totals, known in advance from the batch plan,
    that make the loss an exact token mean over an optimizer step.
    """

    position_ids: Tensor
    """``[b, s]``, packed rows only: position of each token inside its own conversation."""
    attention_mask: Tensor
    """``[b, s]``, unpacked rows only: 1 for real tokens, 0 for padding."""
    num_window_tokens: Tensor
    """Scalar, training only: supervised tokens of the whole accumulation window (this
    micro-batch's optimizer step), summed over all ranks."""
    num_window_all_tokens: Tensor
    """Scalar, training only: real tokens of that window over all ranks (for throughput)."""
    teacher_topk_ids: Tensor
    """``[n, k]`` int32, with a cached teacher (``train.teacher_top_k``): the teacher's k most
    likely next tokens at each of the ``n`` supervised positions, in the order the loss selects
    them (row by row, left to right)."""
    teacher_topk_logprobs: Tensor
    """``[n, k]`` float16: their log-probabilities."""


BATCH_KEYS = Batch.__required_keys__ | Batch.__optional_keys__
