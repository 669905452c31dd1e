"""Every causal LM transformers can build tiny: tempering's chunked loss equals the model's own.

For each architecture in ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` a tiny config is derived from the
config class's defaults, with the head-side logit knobs (scales, soft-caps) set to non-identity
values so that a forgotten one shows. Then either our loss (``supervised_hidden`` +
``chunked_per_token``) equals ``model(labels=...).loss`` and ``check_logit_parity`` passes, or
``check_logit_parity`` refuses the model. Architectures that cannot be built tiny from a config
are skipped with their reason, and a floor on the number actually compared keeps the net honest.
"""

from __future__ import annotations

import collections
import functools
import re
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import transformers
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from tempering import Objective
from tempering.chat.encoding import IGNORE_INDEX
from tempering.plugins.objectives import cross_entropy
from tempering.train.logit_check import UnsupportedModelError, check_logit_parity
from tempering.train.losses import chunked_per_token, supervised_hidden

MODEL_TYPES = sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
# transformers 5.24, 196 model types: 160 compared, 20 refused, 16 skipped. The floor is 80% of
# the compared ones, so a transformers upgrade that breaks tiny building of a few still passes.
MIN_COMPARED = 128
VOCAB, LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, CHUNK = 96, 2, 32, 4, 2, 8, 5

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
                keep: list[int]) -> Any:
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
    if _KNOB.search(key) and "cap" in key and (value is None or isinstance(value, float)):
        return 0.5  # a soft-cap that bites on a tiny model's small logits
    if _KNOB.search(key) and value == 1 and not isinstance(value, bool):
        return 4.0  # a scale that is not the identity
    return value


def _tiny_kwargs(defaults: dict[str, Any], sub_configs: dict[str, Any]) -> dict[str, Any]:
    """Config kwargs that shrink ``defaults`` (a config's ``to_dict()``), recursing into subs."""
    n_layers = next((defaults[k] for k in LAYER_COUNTS if isinstance(defaults.get(k), int)), 0)
    keep = _kept_layers(defaults, n_layers)
    kwargs: dict[str, Any] = {}
    for key, value in defaults.items():
        if key in sub_configs and isinstance(value, dict):
            new: Any = _tiny_kwargs(value, getattr(sub_configs[key], "sub_configs", None) or {})
        else:
            new = _tiny_value(key, value, defaults, n_layers, keep)
        if new is not value and new != value:
            kwargs[key] = new
    return kwargs


def tiny_config(model_type: str) -> Any:
    """The config class's defaults for ``model_type`` with the known size fields shrunk."""
    defaults = transformers.AutoConfig.for_model(model_type)
    kwargs = _tiny_kwargs(defaults.to_dict(), getattr(defaults, "sub_configs", None) or {})
    config = transformers.AutoConfig.for_model(model_type, **kwargs)
    config._attn_implementation = "eager"
    return config


def _batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``[2, 16]`` ids and labels with a prompt and a tail set to ``IGNORE_INDEX``."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (2, 16), generator=g)
    labels = ids.clone()
    labels[:, :4] = IGNORE_INDEX
    labels[1, 12:] = IGNORE_INDEX
    return ids, labels


def our_loss(model: Any, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """tempering's token-mean cross-entropy, through the chunked (checkpointed) path."""
    objective = Objective("cross_entropy", cross_entropy)
    with torch.enable_grad():
        hidden, targets = supervised_hidden(model, {"input_ids": ids, "labels": labels})
        assert targets.numel() > CHUNK  # more than one chunk: the checkpointed path runs
        per_token = chunked_per_token(model, objective, hidden, targets, chunk_size=CHUNK)
    return per_token.detach().sum() / targets.numel()


def _lm_loss(logits: torch.Tensor, labels: torch.Tensor, shift: int) -> torch.Tensor:
    logits = logits[:, : logits.shape[1] - shift].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, shift:].reshape(-1),
                           ignore_index=IGNORE_INDEX)


def reference_loss(model: Any, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The model's own ``.loss`` as the plain next-token loss; ValueError if it is not one.

    Some decoders of encoder-decoder families (BART, Whisper, ...) and XLNet, XLM and CPM-Ant
    take labels already shifted: they get the labels shifted left by one, so that their
    ``.loss`` is the same next-token loss.
    """
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels, use_cache=False)
        if out.loss is None or out.loss.dim() != 0:
            raise ValueError("its forward returns no scalar .loss")
        if torch.allclose(out.loss.float(), _lm_loss(out.logits, labels, 1), rtol=1e-4):
            return out.loss.float()
        if not torch.allclose(out.loss.float(), _lm_loss(out.logits, labels, 0), rtol=1e-4):
            raise ValueError("its .loss is not a plain next-token cross-entropy")
        shifted = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE_INDEX)], 1)
        return model(input_ids=ids, labels=shifted, use_cache=False).loss.float()


def _build(model_type: str) -> Any:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = tiny_config(model_type)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def _first_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[-1][:100]}"


@functools.cache
def outcome(model_type: str) -> tuple[str, str]:
    """``(kind, detail)``, kind one of compared, refused, mismatch or a ``skipped: ...`` reason."""
    try:
        model = _build(model_type)
    except ImportError as err:
        return "skipped: needs an optional package", _first_line(err)
    except Exception as err:
        return "skipped: cannot be built tiny from its config", _first_line(err)
    vocab = min(VOCAB - 8, model.config.get_text_config(decoder=True).vocab_size)  # < unpadded
    ids, labels = _batch(vocab)
    try:
        reference = reference_loss(model, ids, labels)
    except Exception as err:  # needs extra inputs (images, languages, a main model), or broken
        return "skipped: its own forward fails or has no plain LM loss", _first_line(err)
    try:
        check_logit_parity(model)
    except UnsupportedModelError as err:
        return "refused", str(err)
    ours = our_loss(model, ids, labels)
    if torch.allclose(ours, reference, rtol=1e-5, atol=1e-5):
        return "compared", f"{float(ours):.6f}"
    return "mismatch", f"our loss {float(ours):.6f} != the model's {float(reference):.6f}"


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_architecture(model_type):
    kind, detail = outcome(model_type)
    if kind.startswith("skipped"):
        pytest.skip(f"{model_type} {kind}: {detail}")
    assert kind != "mismatch", f"{model_type}: check_logit_parity passed but {detail}"
    if kind == "refused":
        assert "tempering's chunked loss would train on different logits" in detail


def test_enough_architectures_compared(capsys):
    counts = collections.Counter(outcome(model_type)[0] for model_type in MODEL_TYPES)
    with capsys.disabled():
        print("\narchitectures:", ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    assert counts.get("compared", 0) >= MIN_COMPARED, counts


# --- explicit cases --------------------------------------------------------------------------

SMALL = {"vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": 64,
         "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
         "num_key_value_heads": KV_HEADS, "max_position_embeddings": 64}


def test_granite_logits_scaling_matches_own_loss():
    from transformers import GraniteConfig, GraniteForCausalLM

    config = GraniteConfig(**SMALL, logits_scaling=8.0)
    torch.manual_seed(0)
    model = GraniteForCausalLM(config).eval()
    ids, labels = _batch(VOCAB)
    reference = reference_loss(model, ids, labels)
    torch.testing.assert_close(our_loss(model, ids, labels), reference, rtol=1e-5, atol=1e-5)
    check_logit_parity(model)


class _ShiftedLlama(transformers.LlamaForCausalLM):
    """A Llama whose forward post-processes its logits in a way project_logits does not know."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 1.5 + 0.25
        return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_parity_refuses_unknown_logit_post_processing(dtype):
    torch.manual_seed(0)
    model = _ShiftedLlama(transformers.LlamaConfig(**SMALL)).to(dtype)
    model.train()
    with pytest.raises(UnsupportedModelError) as info:
        check_logit_parity(model)
    message = str(info.value)
    assert "_ShiftedLlama" in message and "model_type='llama'" in message
    assert "differ from tempering's by up to" in message and "refused" in message
    assert "project_logits" in message and "\n" not in message
    assert model.training  # mode restored after the error


def test_parity_passes_a_plain_model_in_bf16_and_keeps_eval_mode():
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMALL)).to(torch.bfloat16).eval()
    check_logit_parity(model)
    assert not model.training


def test_parity_refuses_models_without_decoder_or_head(monkeypatch):
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMALL))
    monkeypatch.setattr(model, "get_output_embeddings", lambda: None)
    with pytest.raises(UnsupportedModelError, match="no LM head"):
        check_logit_parity(model)
    monkeypatch.setattr(model, "get_decoder", lambda: None)
    with pytest.raises(UnsupportedModelError, match="no separate decoder"):
        check_logit_parity(model)
