"""Built-in ``trainer_callbacks``: throughput and gradient-norm logging."""

from __future__ import annotations

from typing import Any

from tempering import hookimpl

__all__ = ["trainer_callbacks"]


@hookimpl
def trainer_callbacks(recipe: Any) -> list[Any]:
    from tempering import PerfLogger

    return [PerfLogger()]
