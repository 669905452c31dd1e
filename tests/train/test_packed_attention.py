"""Per-document attention for packed rows: the same hidden states and gradients as
transformers' block-diagonal mask and as each document run alone, for every supported family;
refused or left on the mask where it would not be exact."""

from __future__ import annotations

import json

import pytest
import torch

from tempering.recipe import RecipeError, load_recipe
from tempering.train.driver import run_recipe
from tempering.train.losses import forward_hidden
from tempering.train.packed_attention import (
    NAME,
    document_bounds,
    supports_documents,
    use_documents,
    use_sdpa,
)
from tests.train.test_driver import _weights

SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300,
         "max_position_embeddings": 512}


def _model(model_type: str, **extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    if model_type == "mistral":
        extra = {"sliding_window": None, **extra}  # Mistral 7B v0.2 on; v0.1 had 4,096
    config = AutoConfig.for_model(model_type, **{**SMALL, **extra})
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").float()


def _packed(lengths: list[list[int]]) -> dict[str, torch.Tensor]:
    pos = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in lengths])
    torch.manual_seed(1)
    return {"input_ids": torch.randint(3, 300, pos.shape), "position_ids": pos}


def test_document_bounds_follow_the_restarting_positions():
    batch = _packed([[3, 1, 4], [5, 2, 1]])
    assert document_bounds(batch["position_ids"]) == [[(0, 3), (3, 4), (4, 8)],
                                                      [(0, 5), (5, 7), (7, 8)]]


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_documents_give_the_masks_hidden_states_and_gradients(model_type, checkpointing):
    model = _model(model_type)
    assert supports_documents(model)
    if checkpointing:
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    batch = _packed([[40, 1, 60, 27], [90, 38], [128]])  # a one-token document too

    def run():
        model.zero_grad()
        hidden = forward_hidden(model, batch)
        (hidden.square().mean()).backward()
        return hidden.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                 if p.grad is not None}  # the head is not in forward_hidden

    mask_hidden, mask_grads = run()
    use_documents(model)
    doc_hidden, doc_grads = run()
    torch.testing.assert_close(doc_hidden, mask_hidden, rtol=1e-5, atol=1e-5)
    for name, grad in mask_grads.items():
        torch.testing.assert_close(doc_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # and each document alone, as if it had not been packed
    use_sdpa(model)
    with torch.no_grad():
        alone = forward_hidden(model, {"input_ids": batch["input_ids"][:1, 41:101]})
    torch.testing.assert_close(doc_hidden[:1, 41:101], alone, rtol=1e-5, atol=1e-5)


def test_padded_batches_keep_their_mask_under_the_documents_implementation():
    model = _model("llama").eval()
    ids = torch.randint(3, 300, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        want = forward_hidden(model, {"input_ids": ids, "attention_mask": mask})
        use_documents(model)
        got = forward_hidden(model, {"input_ids": ids, "attention_mask": mask})
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1, :7], want[1, :7])


def test_sliding_windows_and_other_kernels_are_not_switched():
    # a window shorter than a row changes attention within a document; one that covers the
    # whole row does not
    assert not supports_documents(_model("mistral", sliding_window=16), max_length=64)
    assert supports_documents(_model("mistral", sliding_window=64), max_length=64)
    assert not supports_documents(_model("qwen2", use_sliding_window=True, sliding_window=16,
                                         max_window_layers=0), max_length=64)
    eager = _model("llama")
    eager.set_attn_implementation("eager")
    assert not supports_documents(eager)
    assert not supports_documents(_model("gemma"))  # not checked here: left on the mask


def test_a_packed_run_trains_the_same_weights_with_documents_as_with_the_mask(tiny_recipe,
                                                                              tmp_path):
    tiny_recipe["data"]["packing"] = True
    tiny_recipe["trainer"]["max_steps"] = 3
    runs = {}
    for mode in ("documents", "mask", "auto"):
        recipe = load_recipe(tiny_recipe, [f"train.packed_attention={mode}",
                                           f"train.output_dir={tmp_path / mode}"])
        summary = run_recipe(recipe)
        runs[mode] = summary
        assert json.loads((tmp_path / mode / "final" / "config.json").read_text()).get(
            "_attn_implementation", "sdpa") != NAME  # the saved model is a plain one
    assert runs["documents"]["packed_attention"] == runs["auto"]["packed_attention"] == "documents"
    assert runs["mask"]["packed_attention"] == "mask"
    a, b = _weights(tmp_path / "documents"), _weights(tmp_path / "mask")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
    assert runs["documents"]["train_loss"] == pytest.approx(runs["mask"]["train_loss"], rel=1e-5)


def test_documents_on_a_model_that_cannot_is_one_line(tiny_recipe):
    tiny_recipe["data"]["packing"] = True
    tiny_recipe["model"]["attn_implementation"] = "eager"
    with pytest.raises(RecipeError, match="train.packed_attention: documents: llama with eager"):
        run_recipe(load_recipe(tiny_recipe, ["train.packed_attention=documents"]))
