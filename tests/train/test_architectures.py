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
from tempering.train.twin import HEADS, HIDDEN, KV_HEADS, LAYERS, VOCAB, tiny_kwargs

MODEL_TYPES = sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
# transformers 5.24, 196 model types: 160 compared, 20 refused, 16 skipped. The floor is 80% of
# the compared ones, so a transformers upgrade that breaks tiny building of a few still passes.
MIN_COMPARED = 128
CHUNK = 5

def tiny_config(model_type: str) -> Any:
    """The config class's defaults for ``model_type`` with the known size fields shrunk and the
    head-side logit knobs set to values that bite."""
    defaults = transformers.AutoConfig.for_model(model_type)
    kwargs = tiny_kwargs(defaults.to_dict(), getattr(defaults, "sub_configs", None) or {},
                         knobs=True)
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
        per_token = chunked_per_token(model, objective.per_token, hidden, targets, chunk_size=CHUNK)
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
