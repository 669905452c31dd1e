"""Which errors are a person's to fix: the CLI prints them as one line (``-v``: the traceback),
and a stage's spawned process reports them the same way."""

from __future__ import annotations

__all__ = ["user_errors"]


def user_errors() -> tuple[type[BaseException], ...]:
    """Mistakes a person can fix: one line, not a traceback (imported only when needed)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from tempering.chat.templates import TemplateError
    from tempering.data.sources import DataError
    from tempering.generate.sandbox import SandboxError
    from tempering.plugin_manager import ComponentError
    from tempering.recipe import RecipeError
    from tempering.train.logit_check import UnsupportedModelError

    return (RecipeError, DataError, TemplateError, ComponentError, FileNotFoundError,
            MisconfigurationException, UnsupportedModelError, SandboxError, ValueError)
