"""Recipes: the typed schema (``schema``), and loading, overrides and validation (``load``)."""

from tempering.recipe.load import *  # noqa: F403
from tempering.recipe.load import __all__ as _load_all
from tempering.recipe.schema import *  # noqa: F403
from tempering.recipe.schema import __all__ as _schema_all

__all__ = sorted({*_load_all, *_schema_all})
