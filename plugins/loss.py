"""Built-in ``compute_loss``: the recipe's objective at supervised positions, chunked."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tempering import hookimpl

if TYPE_CHECKING:  # torch loads when a loss is computed, not when plugins are listed
    from tempering import LossOutput

__all__ = ["compute_loss"]


@hookimpl(trylast=True)
def compute_loss(module: Any, batch: dict[str, Any]) -> LossOutput:
    from tempering import supervised_loss

    return supervised_loss(module, batch)
