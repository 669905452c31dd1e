"""Built-in ``compute_loss``: the recipe's objective at supervised positions, chunked."""

from __future__ import annotations

from typing import Any

from tempering import hookimpl
from tempering.losses import LossOutput, supervised_loss

__all__ = ["compute_loss"]


@hookimpl(trylast=True)
def compute_loss(module: Any, batch: dict[str, Any]) -> LossOutput:
    return supervised_loss(module, batch)
