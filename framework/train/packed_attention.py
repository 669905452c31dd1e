"""Per-document attention for packed rows: each document attends to itself alone, and the
blocks between documents are never computed.

transformers turns a packed row's restarting ``position_ids`` into a dense block-diagonal mask
and runs SDPA over the whole ``[s, s]`` square, masked-out blocks included; with flash
attention it uses the positions as varlen boundaries instead, but that kernel does not run on a
CPU. ``documents`` is an attention implementation (registered with transformers'
``AttentionInterface``) that runs causal SDPA on each document of each row, given the
documents' bounds (``document_bounds``, computed once per batch from the position ids and
passed down through the decoder's keyword arguments). Without bounds (an unpacked, padded
batch; generation) it is plain SDPA with the mask it is given.

It is used for architectures whose attention within a document is plain causal attention
(``SUPPORTED``, no sliding window); ``train.packed_attention`` picks it (``auto``: on a CPU).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["NAME", "SUPPORTED", "document_bounds", "documents_attention", "supports_documents",
           "use_documents", "use_sdpa", "choose_packed_attention"]

NAME = "tempering_documents"
# Architectures checked to attend within a document exactly as SDPA with a causal mask does.
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")


def document_bounds(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """``[b, s]`` positions restarting at 0 for each document -> each row's ``(start, end)``."""
    rows = []
    for row in position_ids.tolist():
        starts = [i for i, p in enumerate(row) if p == 0] or [0]
        rows.append(list(zip(starts, [*starts[1:], len(row)], strict=True)))
    return rows


def documents_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, dropout: float = 0.0,
                        scaling: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """``query`` ``[b, h, s, d]``, ``key``/``value`` ``[b, h_kv, s, d]`` -> ``[b, s, h, d]``."""
    bounds = kwargs.pop("document_bounds", None)
    if bounds is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    gqa = query.shape[1] != key.shape[1]
    rows = []
    for r, spans in enumerate(bounds):
        pieces = [F.scaled_dot_product_attention(
            query[r:r + 1, :, a:b], key[r:r + 1, :, a:b], value[r:r + 1, :, a:b],
            dropout_p=dropout, is_causal=b - a > 1, scale=scaling, enable_gqa=gqa)
            for a, b in spans]
        rows.append(torch.cat(pieces, dim=2) if len(pieces) > 1 else pieces[0])
    out = torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]  # [b, h, s, d]
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, documents_attention)
    # masks as for SDPA (padded batches); a packed batch's is built and left unused
    AttentionMaskInterface.register(NAME, sdpa_mask)


def supports_documents(model: Any, max_length: int | None = None) -> bool:
    """Whether ``model`` attends with plain causal SDPA within a document of up to
    ``max_length`` tokens: a supported family, and no sliding window shorter than that."""
    config = model.config.get_text_config(decoder=True)
    if config.model_type not in SUPPORTED or config._attn_implementation not in ("sdpa", NAME):
        return False
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    slides = (any(t != "full_attention" for t in layer_types) if layer_types is not None
              else window is not None)
    return not slides or (window is not None and max_length is not None and window >= max_length)


def use_documents(model: Any) -> None:
    _register()
    model.set_attn_implementation(NAME)


def use_sdpa(model: Any) -> None:
    if model.config._attn_implementation == NAME:
        model.set_attn_implementation("sdpa")


def choose_packed_attention(recipe: Any, policy: Any, teacher: Any, device: torch.device) -> str:
    """Switch the models to per-document attention where ``train.packed_attention`` asks for it
    and they allow it; returns what the policy's packed rows use (``documents`` or ``mask``)."""
    mode = recipe.train.packed_attention
    if mode == "documents" and recipe.train.compile:
        from tempering.recipe import RecipeError

        raise RecipeError("train.packed_attention: documents loops over each row's documents in "
                          "Python, which train.compile would recompile for every batch; use auto "
                          "or mask with compile")
    if not recipe.data.packing or mode == "mask" or recipe.train.compile or (
            mode == "auto" and device.type != "cpu"):
        return "mask"
    rows = recipe.data.max_length
    if not supports_documents(policy, rows):
        if mode == "documents":
            from tempering.recipe import RecipeError

            config = policy.config.get_text_config(decoder=True)
            raise RecipeError(
                f"train.packed_attention: documents: {config.model_type} with "
                f"{config._attn_implementation} attention is not one this runs exactly "
                f"(SDPA without a sliding window shorter than data.max_length, model types "
                f"{', '.join(SUPPORTED)}); use mask")
        return "mask"
    use_documents(policy)
    if teacher is not None and supports_documents(teacher, rows):
        use_documents(teacher)
    return "documents"
