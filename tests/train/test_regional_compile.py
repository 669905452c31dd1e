"""``train.compile``: the decoder layers compiled one by one train the weights eager ones do."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tempering.recipe import RecipeError, load_recipe
from tempering.train.driver import run_recipe


@pytest.mark.slow
def test_compiled_layers_train_the_weights_the_eager_layers_train(tiny_recipe, tmp_path,
                                                                  monkeypatch):
    import torch._inductor.config as inductor

    # compile in this process: inductor's pool of compile workers outlives the test, which
    # pytest reports as unclosed files and running subprocesses (seen with a cold cache)
    monkeypatch.setattr(inductor, "compile_threads", 1)
    tiny_recipe["data"]["packing"] = True
    tiny_recipe["trainer"]["max_steps"] = 3
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["train.compile=true"])):
        runs[name] = run_recipe(load_recipe(tiny_recipe, [f"train.output_dir={tmp_path / name}",
                                                          *extra]))
    assert runs["compiled"]["packed_attention"] == "mask"  # documents would recompile per batch
    a = load_file(tmp_path / "eager" / "final" / "model.safetensors")
    b = load_file(tmp_path / "compiled" / "final" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    assert runs["compiled"]["train_loss"] == pytest.approx(runs["eager"]["train_loss"], rel=1e-4)


def test_compile_with_per_document_attention_is_one_line(tiny_recipe):
    tiny_recipe["data"]["packing"] = True
    with pytest.raises(RecipeError, match="train.packed_attention: documents loops over"):
        run_recipe(load_recipe(tiny_recipe, ["train.compile=true",
                                             "train.packed_attention=documents"]))


def test_every_decoder_layer_is_compiled_once():
    from transformers import AutoConfig, AutoModelForCausalLM

    from tempering.recipe import resolve_bundled
    from tempering.train.regional_compile import compile_layers

    model = AutoModelForCausalLM.from_config(
        AutoConfig.from_pretrained(resolve_bundled("bundled:tiny-llama")))
    assert compile_layers(model) == 4
    compiled = [layer._compiled_call_impl for layer in model.model.layers]
    assert all(compiled) and model.model.embed_tokens._compiled_call_impl is None
    compile_layers(model)  # a second fit does not wrap them again
    assert [layer._compiled_call_impl for layer in model.model.layers] == compiled
