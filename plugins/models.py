"""Built-in model and tokenizer loaders (``AutoModelForCausalLM``, ``AutoTokenizer``).

Both are ``trylast``: a plugin that loads models its own way (an adapter, a quantized model,
a remote checkpoint) answers first and this one is the fallback.
"""

from __future__ import annotations

from typing import Any

from tempering import hookimpl

__all__ = ["load_model", "load_tokenizer"]

# The recipe section that configures each role, for error messages.
_SECTION = {"policy": "model", "teacher": "teacher", "generator": "generator", "reward": "reward"}


@hookimpl(trylast=True)
def load_model(role: str, config: Any, seed: int) -> Any:
    from tempering import load_causal_lm

    return load_causal_lm(config, seed, key=_SECTION.get(role, role))


@hookimpl(trylast=True)
def load_tokenizer(config: Any) -> Any:
    from tempering import load_fast_tokenizer

    return load_fast_tokenizer(config)
