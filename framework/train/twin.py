"""A tiny twin of a model: the same architecture and config, shrunk to a few layers and widths.

The logit-parity check (:mod:`tempering.train.logit_check`) depends on the architecture's code
and config, not on its weights or sizes, so a run can refuse an architecture from its twin in a
second, before any data work, and load the real model where Lightning says (``configure_model``).
The real model is checked again there, so a twin that cannot be built only delays the check.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["tiny_kwargs", "tiny_twin", "VOCAB", "LAYERS", "HIDDEN", "HEADS", "KV_HEADS",
           "HEAD_DIM"]

VOCAB, LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM = 96, 2, 32, 4, 2, 8

# Field name -> tiny value, for the config and each nested sub-config that has the field; an int
# default that is already smaller is kept.
TINY: dict[str, Any] = {
    **dict.fromkeys(["hidden_size", "d_model", "n_embd", "embed_dim", "emb_dim", "embedding_size",
                     "embedding_dim", "word_embed_proj_dim", "hidden_size_global"], HIDDEN),
    **dict.fromkeys(["intermediate_size", "ffn_dim", "decoder_ffn_dim", "encoder_ffn_dim",
                     "n_inner", "ffn_hidden_size", "d_ff", "dim_ff", "dff", "d_inner",
                     "intermediate_size_mlp", "moe_intermediate_size", "expert_ffn_hidden_size",
                     "shared_expert_intermediate_size", "shared_intermediate_size",
                     "shared_experts_intermediate_size", "moe_shared_expert_intermediate_size",
                     "dense_intermediate_size", "feed_forward_size"], 64),
    **dict.fromkeys(["num_attention_heads", "n_head", "n_heads", "decoder_attention_heads",
                     "encoder_attention_heads", "num_heads", "index_n_heads"], HEADS),
    **dict.fromkeys(["num_key_value_heads", "num_kv_heads", "multi_query_group_num"], KV_HEADS),
    **dict.fromkeys(["head_dim", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
                     "linear_key_head_dim", "linear_value_head_dim", "index_head_dim",
                     "swa_head_dim", "kv_channels", "dim_head", "attention_head_dim",
                     "linear_head_dim", "mamba_d_head", "mamba_headdim"], HEAD_DIM),
    **dict.fromkeys(["kv_lora_rank", "q_lora_rank", "o_lora_rank"], 16),
    **dict.fromkeys(["num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts",
                     "num_routed_experts"], 4),
    **dict.fromkeys(["num_experts_per_tok", "num_experts_per_token", "moe_topk", "top_k",
                     "moe_k"], 2),
    **dict.fromkeys(["n_group", "num_expert_group", "topk_group", "n_shared_experts", "num_shared_experts",
                     "first_k_dense_replace", "num_dense_layers", "n_groups", "mamba_n_groups",
                     "mamba_ngroups", "expand", "mamba_expand"], 1),
    **dict.fromkeys(["vocab_size", "n_vocab", "decoder_vocab_size",
                     "encoder_hash_byte_group_vocab", "vocab_size_per_layer_input",
                     "shape_vocab_size", "pronunciation_vocab_size"], VOCAB),
    **dict.fromkeys(["hidden_size_per_layer_input", "shape_embed_dim", "pronunciation_embed_dim",
                     "zero_expert_num"], 8),
    **dict.fromkeys(["max_position_embeddings", "n_positions", "n_ctx", "max_seq_len",
                     "context_length", "max_sequence_length", "model_max_length"], 64),
    **dict.fromkeys(["mamba_d_state", "state_size", "ssm_state_size", "mamba_n_heads",
                     "mamba_num_heads", "n_mamba_heads", "linear_num_heads", "linear_num_key_heads", "linear_num_value_heads"], 4),
    **dict.fromkeys(["mamba_chunk_size", "chunk_size", "index_topk", "sliding_window",
                     "sliding_window_size", "rel_extent", "attention_chunk_size"], 8),
    "rotary_dim": 4, "num_kv_shared_layers": 0, "is_decoder": True,
    "axial_pos_embds_dim": [16, 16], "axial_pos_shape": [4, 16],  # Reformer
    "lsh_attn_chunk_length": 8, "local_attn_chunk_length": 8,
    "unpadded_vocab_size": VOCAB - 8,  # Inkling: logits are cut to it, so that shows too
    "output_router_logits": False,  # the reference must be the plain LM loss, no aux loss
}
LAYER_COUNTS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers",
                "encoder_layers", "num_decoder_layers", "num_encoder_layers")
TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id",
             "sep_token_id", "cls_token_id", "mask_token_id")
# Head-side logit scales and caps (not attention, router or MLP ones).
_KNOB = re.compile(r"^(?!.*(attn|attention|router|gate|mlp)).*(logit|lm_head).*(scal|mult|cap)")
_INDEX_LIST = re.compile(r"layer|idx|ids")


def _is_index_list(key: str, value: Any, n_layers: int) -> bool:
    """Whether ``value`` lists layer indices (``moe_layers``, ``hybrid_layer_ids``, ...)."""
    return (isinstance(value, list) and bool(value) and _INDEX_LIST.search(key) is not None
            and all(isinstance(v, int) and 0 <= v < n_layers for v in value)
            and all(a < b for a, b in zip(value, value[1:], strict=False)))


def _kept_layers(defaults: dict[str, Any], n_layers: int) -> list[int]:
    """The first ``LAYERS`` layers plus the first layer of every kind a per-layer list names."""
    keep = set(range(min(LAYERS, n_layers)))
    for key, value in defaults.items():
        if (isinstance(value, list) and len(value) == n_layers > LAYERS
                and len({repr(v) for v in value}) <= 4
                and not _is_index_list(key, value, n_layers)):
            keep.update({repr(v): i for i, v in reversed(list(enumerate(value)))}.values())
    return sorted(keep)


def _tiny_value(key: str, value: Any, defaults: dict[str, Any], n_layers: int,
                keep: list[int], knobs: bool) -> Any:
    """The tiny replacement for one config field (``value`` itself when none applies)."""
    if key in LAYER_COUNTS and isinstance(value, int):
        return len(keep)
    if _is_index_list(key, value, n_layers):
        return [keep.index(v) for v in value if v in keep]  # layer indices, renumbered
    if isinstance(value, list) and n_layers > LAYERS and len(value) == n_layers:
        return [TINY[key]] * len(keep) if key in TINY else [value[i] for i in keep]
    if key in ("num_key_value_heads", "num_kv_heads") and value == defaults.get(
            "num_attention_heads", defaults.get("n_head")):
        return HEADS  # multi-head (and MLA) attention stays multi-head
    if key in TINY:
        tiny = TINY[key]
        return min(value, tiny) if type(value) is int and type(tiny) is int else tiny
    if key in TOKEN_IDS and isinstance(value, int) and value >= VOCAB:
        return VOCAB - 1
    if knobs and _KNOB.search(key) and "cap" in key and (value is None or isinstance(value, float)):
        return 0.5  # a soft-cap that bites on a tiny model's small logits
    if knobs and _KNOB.search(key) and value == 1 and not isinstance(value, bool):
        return 4.0  # a scale that is not the identity
    return value


def tiny_kwargs(defaults: dict[str, Any], sub_configs: dict[str, Any], *,
                knobs: bool = False) -> dict[str, Any]:
    """Config kwargs that shrink ``defaults`` (a config's ``to_dict()``), recursing into subs.

    With ``knobs`` the head-side logit scales and soft-caps are also set to values that bite
    on a tiny model (so a test sees a forgotten one); without it they keep their values."""
    n_layers = next((defaults[k] for k in LAYER_COUNTS if isinstance(defaults.get(k), int)), 0)
    keep = _kept_layers(defaults, n_layers)
    kwargs: dict[str, Any] = {}
    for key, value in defaults.items():
        if key in sub_configs and isinstance(value, dict):
            new: Any = tiny_kwargs(value, getattr(sub_configs[key], "sub_configs", None) or {},
                                   knobs=knobs)
        else:
            new = _tiny_value(key, value, defaults, n_layers, keep, knobs)
        if new is not value and new != value:
            kwargs[key] = new
    return kwargs


def tiny_twin(config: Any) -> Any:
    """A randomly initialised tiny model of ``config``'s architecture, or None when its config
    class cannot be rebuilt small (custom code, constraints between fields)."""
    import warnings

    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a shrunk config's complaints are not the user's
    try:
        real = config.to_dict()
        kwargs = tiny_kwargs(real, getattr(config, "sub_configs", None) or {})
        kwargs.pop("is_decoder", None)  # keep the config's own
        for key, value in kwargs.items():  # a shrunk sub-config keeps its other real fields
            if isinstance(value, dict) and isinstance(real.get(key), dict):
                kwargs[key] = {**real[key], **value}
        tiny = type(config).from_dict({**real, **kwargs})
        tiny._attn_implementation = "eager"
        with torch.random.fork_rng(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(0)
            return transformers.AutoModelForCausalLM.from_config(tiny, dtype=torch.float32)
    except Exception:  # any failure to build only defers the check to the real model
        return None
    finally:
        hf_logging.set_verbosity(level)
