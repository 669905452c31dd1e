"""Loading tokenizers and causal LMs from a recipe (hub ids, local folders, bundled assets)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tempering.recipe import ModelConfig, RecipeError, resolve_bundled
from tempering.train.adapters import (
    adapter_base,
    is_adapter_dir,
    keep_4bit_differentiable,
    load_adapter_model,
    quantization_4bit,
)

__all__ = ["load_fast_tokenizer", "load_causal_lm", "load_model_config", "has_weights", "loading"]

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def has_weights(location: str) -> bool:
    path = Path(location)
    return not path.is_dir() or any((path / f).exists() for f in _WEIGHT_FILES)


@contextlib.contextmanager
def loading(key: str, location: str) -> Iterator[None]:
    """A location that cannot be loaded (missing, offline hub, no access) is one line."""
    if location.startswith(("/", ".", "~")) and not Path(location).expanduser().exists():
        raise RecipeError(f"{key}: {location} does not exist")
    try:
        yield
    except OSError as exc:  # transformers reports missing files and hub failures as OSError
        problem = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RecipeError(f"{key}: cannot load {location!r}: {problem}") from exc


def load_fast_tokenizer(cfg: ModelConfig, key: str = "model") -> Any:
    """The recipe's fast tokenizer; a pad token falls back to EOS only when none is defined."""
    from transformers import AutoTokenizer

    location = resolve_bundled(cfg.tokenizer or cfg.name_or_path)
    where = f"{key}.tokenizer" if cfg.tokenizer else f"{key}.name_or_path"
    with loading(where, location):
        tokenizer = AutoTokenizer.from_pretrained(
            location, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision,
            use_fast=True)
    if not tokenizer.is_fast:
        raise RecipeError(f"{where}: {location} has no fast tokenizer; exact masks need "
                          "character offsets")
    return tokenizer


def load_model_config(cfg: ModelConfig, key: str = "model") -> Any:
    """The model's ``transformers`` config (no weights), with ``config_overrides`` applied."""
    from transformers import AutoConfig

    location = resolve_bundled(cfg.name_or_path)
    if cfg.init != "random" and is_adapter_dir(location):  # the architecture is the base's
        location = resolve_bundled(adapter_base(location, key))
    with loading(f"{key}.name_or_path", location):
        config = AutoConfig.from_pretrained(location, trust_remote_code=cfg.trust_remote_code,
                                            revision=cfg.revision)
    if cfg.config_overrides and cfg.init != "random":
        raise RecipeError(f"{key}.config_overrides: only with {key}.init: random (pretrained "
                          "weights fix the architecture)")
    for name, value in cfg.config_overrides.items():
        if not hasattr(config, name):
            raise RecipeError(f"{key}.config_overrides.{name}: not a key of "
                              f"{type(config).__name__}")
        setattr(config, name, value)
    return config


def load_causal_lm(cfg: ModelConfig, seed: int, key: str = "model") -> Any:
    """``AutoModelForCausalLM`` from weights (``init: pretrained``) or from its config."""
    from transformers import AutoModelForCausalLM

    location = resolve_bundled(cfg.name_or_path)
    dtype = _DTYPES.get(cfg.dtype, "auto")
    common = {"trust_remote_code": cfg.trust_remote_code, "revision": cfg.revision}
    if cfg.attn_implementation:
        common["attn_implementation"] = cfg.attn_implementation
    quantized = cfg.lora is not None and cfg.lora.load_in_4bit
    if cfg.init != "random" and is_adapter_dir(location):
        # LoRA adapters alone (`lora.merge: false`): their base, with the adapters merged in
        if quantized:
            raise RecipeError(f"{key}.lora.load_in_4bit: {location} holds adapters alone, which "
                              "would be merged into 4-bit weights; train the earlier stage with "
                              "lora.merge: true")
        base = load_causal_lm(dataclasses.replace(cfg, name_or_path=adapter_base(location, key)),
                              seed, key)
        model = load_adapter_model(location, base, key)
        if (Path(location) / "generation_config.json").is_file():  # the trained stop tokens
            from transformers import GenerationConfig

            model.generation_config = GenerationConfig.from_pretrained(location)
        return model
    if cfg.init == "random":
        config = load_model_config(cfg, key)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype if dtype != "auto" else torch.float32,
            trust_remote_code=cfg.trust_remote_code,
            **({"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}))
    else:
        if not has_weights(location):
            raise RecipeError(
                f"{key}.name_or_path: {cfg.name_or_path} has a config but no weights; set "
                f"{key}.init: random to train it from scratch")
        if quantized:
            common.update(quantization_4bit(dtype if dtype != "auto" else torch.float32))
        with loading(f"{key}.name_or_path", location):
            model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **common)
        if quantized:  # before its first forward (the logit check)
            keep_4bit_differentiable(model)
    if cfg.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24's name
            model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return model
