"""LoRA adapters (``model.lora``, through peft) on the tiny model: the gradient against the
full-weight gradient, a frozen base, saving and merging, resume, a distilled student, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from tempering.recipe import LoraConfig, ModelConfig, RecipeError, load_recipe
from tempering.train.driver import run_recipe
from tests.train.test_driver import _KillAt

pytest.importorskip("peft")

LORA = {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def _lora(tiny_recipe: dict, **lora) -> dict:
    model = {**tiny_recipe["model"], "lora": {**LORA, **lora}}
    return {**tiny_recipe, "model": model}


class _FirstGrads(Callback):
    """Gradients and weights of the first optimizer step, before it is taken."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}
        self.weights: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        if not self.grads:
            for n, p in module.model.named_parameters():
                self.weights[n] = p.detach().clone()
                if p.grad is not None:
                    self.grads[n] = p.grad.clone()


def test_the_adapter_gradient_is_the_full_weight_gradient_through_the_adapter(tiny_recipe):
    # B = 0 at the start, so W + s B A = W: the full-weight gradient G of a plain run gives
    # the adapters' gradients as dL/dB = s G A^T and dL/dA = s B^T G = 0 (token mean intact).
    tiny_recipe["trainer"]["max_steps"] = 1
    tiny_recipe["data"]["batch_size"] = 3
    full, lora = _FirstGrads(), _FirstGrads()
    run_recipe(load_recipe(tiny_recipe, ["train.save_final=false"]), callbacks=[full])
    run_recipe(load_recipe(_lora(tiny_recipe), ["train.save_final=false", "train.overwrite=true"]),
               callbacks=[lora])
    scale = LORA["alpha"] / LORA["r"]
    assert set(lora.grads) == {f"model.layers.{i}.self_attn.{m}.lora_{ab}.default.weight"
                               for i in range(4) for m in ("q_proj", "v_proj") for ab in "AB"}
    for layer in range(4):
        for name in ("q_proj", "v_proj"):
            prefix = f"model.layers.{layer}.self_attn.{name}"
            g = full.grads[f"{prefix}.weight"]
            a = lora.weights[f"{prefix}.lora_A.default.weight"]
            torch.testing.assert_close(lora.grads[f"{prefix}.lora_B.default.weight"],
                                       scale * g @ a.T, rtol=1e-4, atol=1e-7)
            assert not lora.grads[f"{prefix}.lora_A.default.weight"].any()
            torch.testing.assert_close(lora.weights[f"{prefix}.base_layer.weight"],
                                       full.weights[f"{prefix}.weight"], rtol=0, atol=0)


def test_only_the_adapters_train_and_the_merged_model_is_base_plus_update(tiny_recipe, tmp_path):
    from tempering.models import load_causal_lm

    summary = run_recipe(load_recipe(_lora(tiny_recipe)))
    final = Path(summary["final_model"])
    cfg = load_causal_lm(load_recipe(tiny_recipe).model, seed=3).config
    h, kv = cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim
    # r x (in + out) for q_proj (h -> h) and v_proj (h -> kv) of every layer
    assert summary["trainable_parameters"] == cfg.num_hidden_layers * 4 * (2 * h + h + kv)
    assert summary["total_parameters"] > 10 * summary["trainable_parameters"]
    merged = load_file(final / "model.safetensors")
    adapter = load_file(final / "adapter" / "adapter_model.safetensors")
    base = load_causal_lm(load_recipe(tiny_recipe).model, seed=3).state_dict()  # the init
    scale = LORA["alpha"] / LORA["r"]
    updated = 0
    for name, weight in merged.items():
        key = name.removeprefix("model.")
        a = adapter.get(f"base_model.model.model.{key.removesuffix('.weight')}.lora_A.weight")
        if a is None:  # not adapted: exactly the base
            torch.testing.assert_close(weight, base[name], rtol=0, atol=0, msg=name)
            continue
        b = adapter[f"base_model.model.model.{key.removesuffix('.weight')}.lora_B.weight"]
        assert b.abs().max() > 0, name
        torch.testing.assert_close(weight, base[name] + scale * b @ a, rtol=1e-5, atol=1e-6)
        updated += 1
    assert updated == 8
    # The merged model, loaded like any model, answers as the adapters do.
    assert '"r": 4' in (final / "adapter" / "adapter_config.json").read_text()


def test_adapters_saved_alone_load_as_their_base_with_the_adapters_merged(tiny_recipe, tmp_path):
    from tempering.models import load_causal_lm, load_fast_tokenizer, load_model_config

    with pytest.raises(RecipeError, match="a model.init: random base exists only in this run"):
        run_recipe(load_recipe(_lora(tiny_recipe, merge=False)))
    base = _saved_base(tiny_recipe, tmp_path / "base")  # adapters train on a base on disk
    tiny_recipe["model"] = {"name_or_path": base}
    merged = Path(run_recipe(load_recipe(_lora(tiny_recipe)))["final_model"])
    alone = _lora(tiny_recipe, merge=False)
    alone["train"] = {**alone["train"], "output_dir": str(tmp_path / "alone")}
    final = Path(run_recipe(load_recipe(alone))["final_model"])
    assert (final / "adapter_config.json").is_file()
    assert not (final / "model.safetensors").exists()
    ids = torch.tensor([[5, 9, 13, 2, 7, 11]])
    with torch.no_grad():
        want = load_causal_lm(ModelConfig(name_or_path=str(merged)), 0).eval()(ids).logits
        got = load_causal_lm(ModelConfig(name_or_path=str(final)), 0).eval()(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # A stage that starts from it (model_from, rounds) reads it as a model; so does the tokenizer.
    assert load_model_config(ModelConfig(name_or_path=str(final))).num_hidden_layers == 4
    assert load_fast_tokenizer(ModelConfig(name_or_path=str(final))).chat_template


def test_a_resumed_adapter_run_ends_where_the_uninterrupted_run_ends(tiny_recipe, tmp_path):
    recipe = _lora(tiny_recipe, dropout=0.1)
    recipe["trainer"]["max_steps"] = 10
    recipe["train"] = {**recipe["train"], "checkpoint_every_n_steps": 4}
    whole = {**recipe, "train": {**recipe["train"], "output_dir": str(tmp_path / "a")}}
    run_recipe(load_recipe(whole))
    broken = {**recipe, "train": {**recipe["train"], "output_dir": str(tmp_path / "b")}}
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_recipe(load_recipe(broken), callbacks=[_KillAt(6)])
    ckpt = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])  # no base
    assert run_recipe(load_recipe(broken, ["train.resume_from=last"]))["global_step"] == 10
    a = load_file(tmp_path / "a" / "final" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "final" / "adapter" / "adapter_model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)

    # Resuming on other base weights (another init seed) is refused, not silently mixed.
    with pytest.raises(RecipeError, match="other base weights"):
        run_recipe(load_recipe(broken, ["train.resume_from=last", "train.seed=4"]))


def test_a_distilled_student_trains_adapters_against_its_teacher(tiny_recipe):
    recipe = _lora(tiny_recipe, target_modules=["all-linear"])
    recipe.update(objective={"name": "soft_kl", "temperature": 2.0},
                  teacher={"name_or_path": "bundled:tiny-llama", "init": "random",
                           "dtype": "float32"})
    recipe["trainer"]["max_steps"] = 3
    summary = run_recipe(load_recipe(recipe))
    assert summary["global_step"] == 3
    # every linear layer of the student but its output head: 7 per layer
    adapter = load_file(Path(summary["final_model"]) / "adapter" / "adapter_model.safetensors")
    assert len(adapter) == 4 * 7 * 2 and not any("lm_head" in k for k in adapter)


def test_adapter_mistakes_are_one_line(tiny_recipe, monkeypatch):
    with pytest.raises(RecipeError, match="teacher.lora: the teacher is frozen"):
        recipe = _lora(tiny_recipe)
        recipe.update(objective="soft_kl", teacher={**recipe["model"]})
        run_recipe(load_recipe(recipe))
    with pytest.raises(RecipeError, match="model.lora.target_modules: .*nonexistent"):
        run_recipe(load_recipe(_lora(tiny_recipe, target_modules=["nonexistent"])))
    with pytest.raises(RecipeError, match=r"model.lora.r: 0 is below the smallest allowed value 1"):
        load_recipe(_lora(tiny_recipe, r=0))

    import builtins

    real_import = builtins.__import__

    def no_peft(name, *args, **kwargs):
        if name == "peft":
            raise ImportError("No module named 'peft'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_peft)
    with pytest.raises(RecipeError, match=r"model.lora: .*pip install 'tempering\[peft\]'"):
        run_recipe(load_recipe(_lora(tiny_recipe)))


def test_sharded_strategies_are_refused_with_adapters(tiny_recipe):
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    from tempering.train.driver import _check_adapter_strategy

    recipe = load_recipe(_lora(tiny_recipe))
    with pytest.raises(RecipeError, match="model.lora: .* not under FSDPStrategy"):
        _check_adapter_strategy(recipe, SimpleNamespace(strategy=FSDPStrategy()))
    assert isinstance(recipe.model.lora, LoraConfig)


def test_rounds_of_adapters_saved_alone_train_on_from_the_previous_rounds_model(tiny_recipe,
                                                                                tmp_path):
    from tempering.models import load_causal_lm
    from tempering.pipeline.run import run_pipeline

    tiny_recipe["model"] = {"name_or_path": _saved_base(tiny_recipe, tmp_path / "base")}
    tiny_recipe["eval"]["before_training"] = True
    tiny_recipe["trainer"]["max_steps"] = 3
    summary = run_pipeline(load_recipe({**_lora(tiny_recipe, merge=False), "rounds": 2}))
    first, second = summary["stages"]
    round2 = json.loads((Path(second["output_dir"]) / "summary.json").read_text())
    # round 2's base is round 1's base with round 1's adapters merged: its loss before training
    # is round 1's after, and its own adapters name round 1's folder as their base
    assert round2["val_loss_before"] == pytest.approx(first["val_loss"], rel=1e-5)
    config = json.loads((Path(second["final_model"]) / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == first["final_model"]
    with torch.no_grad():  # the chain of two adapter folders loads as one model
        model = load_causal_lm(ModelConfig(name_or_path=second["final_model"]), 0)
    assert sum(p.numel() for p in model.parameters()) == round2["total_parameters"] - \
        round2["trainable_parameters"]


def _saved_base(tiny_recipe: dict, folder: Path, **overrides) -> str:
    """The tiny model's seeded initialisation saved as a pretrained model (float32)."""
    from tempering.models import load_causal_lm, load_fast_tokenizer

    model = ModelConfig(**{**tiny_recipe["model"], "config_overrides": overrides})
    load_causal_lm(model, seed=3).save_pretrained(folder)
    load_fast_tokenizer(ModelConfig()).save_pretrained(folder)
    return str(folder)


def _qlora_setup(tiny_recipe: dict, tmp_path: Path, steps: int) -> str:
    """A saved base for a QLoRA run of ``steps`` steps, validated before training too."""
    pytest.importorskip("bitsandbytes")
    # bitsandbytes' CPU inference kernel needs in_features that are a multiple of its block
    # (64); the tiny model's MLP is 352 wide, real models' are multiples of 64
    base = _saved_base(tiny_recipe, tmp_path / "base", intermediate_size=384)
    tiny_recipe["model"] = {"name_or_path": base, "dtype": "float32"}
    tiny_recipe["trainer"]["max_steps"] = steps
    tiny_recipe["eval"]["before_training"] = True
    return base


class _Kinds(Callback):
    def on_train_start(self, trainer, module) -> None:
        self.kinds = {type(m).__name__ for m in module.model.modules()}


def test_qlora_trains_adapters_on_a_4bit_base_and_merges_them_into_the_full_precision_base(
        tiny_recipe, tmp_path):
    base = _qlora_setup(tiny_recipe, tmp_path, steps=4)
    kinds = _Kinds()
    summary = run_recipe(load_recipe(_lora(tiny_recipe, load_in_4bit=True)), callbacks=[kinds])
    assert "Linear4bit" in kinds.kinds  # the base really was 4-bit while training
    assert summary["val_loss"] < summary["val_loss_before"]
    final = Path(summary["final_model"])
    merged = load_file(final / "model.safetensors")
    adapter = load_file(final / "adapter" / "adapter_model.safetensors")
    full = load_file(Path(base) / "model.safetensors")
    scale = LORA["alpha"] / LORA["r"]
    for name, weight in merged.items():
        stem = f"base_model.model.{name.removesuffix('.weight')}"
        if f"{stem}.lora_A.weight" not in adapter:  # not adapted: the stored base, not 4-bit
            torch.testing.assert_close(weight, full[name], rtol=0, atol=0, msg=name)
            continue
        update = scale * adapter[f"{stem}.lora_B.weight"] @ adapter[f"{stem}.lora_A.weight"]
        torch.testing.assert_close(weight, full[name] + update, rtol=1e-5, atol=1e-6, msg=name)


def test_qlora_mistakes_are_one_line(tiny_recipe, tmp_path):
    with pytest.raises(RecipeError, match="load_in_4bit: quantizes pretrained weights"):
        run_recipe(load_recipe(_lora(tiny_recipe, load_in_4bit=True)))


class _FirstGrads4bit(_FirstGrads):
    """Also the 4-bit layers' weights as they compute (dequantized)."""

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        from bitsandbytes.functional import dequantize_4bit
        from bitsandbytes.nn import Linear4bit

        if not self.grads:
            self.dequantized = {
                name.removesuffix(".base_layer") + ".weight": dequantize_4bit(
                    m.weight.data, m.weight.quant_state).float()
                for name, m in module.model.named_modules() if isinstance(m, Linear4bit)}
        super().on_before_optimizer_step(trainer, module, optimizer)


def test_qlora_gradients_are_the_full_weight_gradients_of_the_dequantized_base(tiny_recipe,
                                                                               tmp_path):
    # After the eval-mode passes before training (logit check, validation), so a layer that
    # switched to a kernel without a backward would show here.
    from safetensors.torch import save_file

    base = _qlora_setup(tiny_recipe, tmp_path, steps=1)
    lora = _FirstGrads4bit()
    run_recipe(load_recipe(_lora(tiny_recipe, load_in_4bit=True, target_modules=["all-linear"]),
                           ["train.save_final=false"]), callbacks=[lora])
    assert len(lora.dequantized) == 4 * 7
    weights = load_file(Path(base) / "model.safetensors")  # the same base, dequantized
    save_file({**weights, **lora.dequantized}, Path(base) / "model.safetensors")
    full = _FirstGrads()
    run_recipe(load_recipe(tiny_recipe, ["train.save_final=false", "train.overwrite=true"]),
               callbacks=[full])
    scale = LORA["alpha"] / LORA["r"]
    for name in lora.dequantized:
        stem = name.removesuffix(".weight")
        a = lora.weights[f"{stem}.lora_A.default.weight"]
        torch.testing.assert_close(lora.grads[f"{stem}.lora_B.default.weight"],
                                   scale * full.grads[name] @ a.T, rtol=1e-3, atol=1e-6,
                                   msg=name)


def test_a_stage_that_starts_from_an_earlier_stage_trains_its_own_adapters(tiny_recipe):
    # The handed model is the earlier stage's weights; the stage's own model section (here
    # its adapters) says how they train. Before, the handed model replaced the whole section
    # and the adapters were silently left out.
    from tempering.pipeline.run import run_pipeline

    tiny_recipe["trainer"]["max_steps"] = 2
    recipe = {**tiny_recipe, "stages": [
        {"kind": "train", "id": "base"},
        {"kind": "train", "id": "adapters", "model_from": "base",
         "model": {"lora": LORA, "gradient_checkpointing": True}}]}
    base, adapters = run_pipeline(load_recipe(recipe))["stages"]
    own = json.loads((Path(adapters["output_dir"]) / "stage_recipe.json").read_text())["model"]
    assert own["name_or_path"] == base["final_model"] and own["init"] == "pretrained"
    assert own["gradient_checkpointing"] and own["lora"]["r"] == LORA["r"]
    summary = json.loads((Path(adapters["output_dir"]) / "summary.json").read_text())
    assert summary["trainable_parameters"] < summary["total_parameters"] / 10
    assert (Path(adapters["final_model"]) / "adapter" / "adapter_config.json").is_file()


class _Modes(Callback):
    def on_train_batch_start(self, trainer, module, *args) -> None:
        self.eval_modules = [n for n, m in module.model.named_modules() if not m.training]


def test_a_pretrained_policy_trains_in_train_mode_with_its_dropout_on(tiny_recipe, tmp_path):
    # transformers' from_pretrained returns eval mode, which Lightning keeps; the policy's own
    # dropout and the adapters' would be off in training
    base = _saved_base(tiny_recipe, tmp_path / "base", attention_dropout=0.1)
    tiny_recipe["model"] = {"name_or_path": base, "dtype": "float32"}
    tiny_recipe["trainer"]["max_steps"] = 2
    tiny_recipe["eval"]["before_training"] = True  # a validation pass before training, too
    for recipe in (tiny_recipe, _lora(tiny_recipe, dropout=0.1)):
        modes = _Modes()
        run_recipe(load_recipe(recipe, ["train.overwrite=true", "train.save_final=false"]),
                   callbacks=[modes])
        assert modes.eval_modules == []
