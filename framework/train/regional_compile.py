"""``train.compile``: the policy's decoder layers compiled one by one with ``torch.compile``.

Regional compilation: every layer of a decoder runs the same code on the same shapes, so the
layers share one compiled graph and compiling costs about one layer's time, where compiling the
whole model traces every layer. The embedding, the final norm and the chunked loss stay eager.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["compile_layers"]


def compile_layers(model: Any) -> int:
    """``torch.compile`` each decoder layer in place (``train.compile``); returns how many. A
    decoder without a ``layers`` list is compiled whole."""
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    targets = list(layers) if isinstance(layers, torch.nn.ModuleList) else [decoder]
    for module in targets:
        if not getattr(module, "_compiled_call_impl", None):  # compiled once, not per fit
            module.compile()
    return len(targets)
