"""Refuse models whose own logits tempering's chunked loss would not reproduce.

tempering never builds the full ``[b, s, v]`` logits: ``losses.forward_hidden`` runs the decoder
and ``losses.project_logits`` applies the LM head plus the post-processing it knows (scales,
soft-caps). An architecture whose forward does something else between the head and ``.logits``
(a different scale, a cap, an extra head transform) would be trained silently on logits that
differ from what it generates with. :func:`check_logit_parity` runs one short input both ways
and raises :class:`UnsupportedModelError` when the two disagree.
"""

from __future__ import annotations

from typing import Any

import torch

from tempering.train.losses import forward_hidden, project_logits

__all__ = ["UnsupportedModelError", "check_logit_parity"]

_NUM_TOKENS = 12


class UnsupportedModelError(ValueError):
    """The model's logits cannot be reproduced by tempering's chunked loss."""


def _describe(model: Any) -> str:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return f"{type(model).__name__} (model_type={model_type!r})"


def _refusal(model: Any, problem: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{_describe(model)}: {problem}. tempering's chunked loss would train on different "
        "logits than the model's own forward, so this architecture is refused until "
        "tempering.train.losses.project_logits replicates its logit post-processing."
    )


def _vocab_size(model: Any) -> int:
    """The LM head's output size; raises unless there is a separate decoder and a head."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is None or decoder is model:
        raise _refusal(model, "get_decoder() returns no separate decoder module")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise _refusal(model, "get_output_embeddings() returns no LM head")
    size = getattr(head, "out_features", None) or model.config.get_text_config().vocab_size
    return int(size)


def _tolerance(dtype: torch.dtype) -> float:
    """Allowed max difference relative to the largest logit: a few ulps of ``dtype``."""
    return max(1e-4, 4 * torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-4


def _both_logits(model: Any, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own logits and tempering's, both ``[1, n, v]`` in float32."""
    reference = model(input_ids=input_ids, use_cache=False).logits
    try:
        ours = project_logits(model, forward_hidden(model, {"input_ids": input_ids}))
    except Exception as err:  # any failure of our path means we cannot train this model
        raise _refusal(model, f"the chunked-loss path fails ({type(err).__name__}: {err})") from err
    if ours.shape != reference.shape:
        raise _refusal(model, f"logits have shape {tuple(ours.shape)} instead of "
                              f"{tuple(reference.shape)}")
    return reference.float(), ours.float()


def check_logit_parity(model: Any) -> None:
    """Raise :class:`UnsupportedModelError` unless tempering reproduces the model's own logits.

    Runs ``_NUM_TOKENS`` fixed token ids through ``model(...).logits`` and through
    ``project_logits(model, forward_hidden(model, ...))`` in eval mode without gradients, and
    compares them relative to the logits' magnitude, loosely enough for bf16 numerics.

    Args:
        model: a transformers causal LM (``*ForCausalLM`` or similar).

    Raises:
        UnsupportedModelError: the model has no separate decoder or LM head, the chunked-loss
            path fails on it, or the two logits differ beyond the tolerance.
    """
    vocab = _vocab_size(model)
    param = next(model.parameters())
    input_ids = (torch.arange(_NUM_TOKENS, device=param.device) * 7 + 3).remainder(vocab)[None]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            reference, ours = _both_logits(model, input_ids)
    finally:
        model.train(was_training)
    max_diff = float((reference - ours).abs().max())
    magnitude = float(reference.abs().max())
    if not max_diff <= _tolerance(param.dtype) * max(magnitude, 1e-6):
        raise _refusal(model, f"its logits differ from tempering's by up to {max_diff:.4g} "
                              f"(largest logit {magnitude:.4g})")
