"""Recipe loading: YAML (safe loader) + ``a.b=value`` overrides -> typed, validated Recipe."""

from __future__ import annotations

import dataclasses
import importlib.resources
import inspect
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from tempering.plugin_manager import closest
from tempering.recipe_schema import (
    DataConfig,
    DataSource,
    EvalConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    Recipe,
    TrainConfig,
    WandbConfig,
)

__all__ = [
    "Recipe", "RecipeError", "DataSource", "DataConfig", "ModelConfig", "ObjectiveConfig",
    "OptimConfig", "TrainConfig", "EvalConfig", "WandbConfig",
    "bundled_recipes", "find_recipe", "load_recipe", "parse_overrides", "resolve_bundled",
    "validate_components", "to_dict",
]

BUNDLED_PREFIX = "bundled:"


class RecipeError(ValueError):
    """A recipe problem, reported as one line with the file and key path."""


def bundled_recipes() -> dict[str, Path]:
    """Bundled recipe names -> paths."""
    root = importlib.resources.files("tempering.recipes")
    return {p.name[:-5]: Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml")}


def find_recipe(name_or_path: str) -> Path:
    """A recipe file path, or the path of the bundled recipe with that name."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    bundled = bundled_recipes()
    name = name_or_path[:-5] if name_or_path.endswith(".yaml") else name_or_path
    if name in bundled:
        return bundled[name]
    raise RecipeError(f"no recipe file {name_or_path!r} and no bundled recipe of that name"
                      f"{closest(name, bundled)}")


def resolve_bundled(location: str) -> str:
    """Turn ``bundled:tiny-llama`` into a path inside the installed package; others unchanged."""
    if not location.startswith(BUNDLED_PREFIX):
        return location
    path = Path(str(importlib.resources.files("tempering.assets"))) / location[len(BUNDLED_PREFIX):]
    if not path.exists():
        raise RecipeError(f"{location!r}: no such bundled asset ({path})")
    return str(path)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[x, y]"]`` -> ``{"a.b": 1, "c": ["x", "y"]}`` (values parsed as YAML)."""
    parsed = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"override {item!r} is not of the form key.path=value")
        parsed[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return parsed


def _apply_override(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[int(part)]
            continue
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], where)
    if dataclasses.is_dataclass(tp):
        if isinstance(tp, type) and tp is ObjectiveConfig and isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, where)  # type: ignore[arg-type]
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list, got {type(value).__name__}")
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" as a string
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise RecipeError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    if cls is ObjectiveConfig:  # `objective: {name: soft_kl, temperature: 2}` -> options
        raw = dict(raw)
        options = dict(raw.pop("options", None) or {})
        options.update({k: raw.pop(k) for k in list(raw) if k != "name"})
        raw["options"] = options
    kwargs = {}
    for key, value in raw.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            raise RecipeError(f"{path}: unknown key{closest(key, fields)}")
        converted = _convert(value, hints[key], path)
        choices = fields[key].metadata.get("choices")
        if choices and converted not in choices:
            raise RecipeError(f"{path}: {converted!r} is not one of {', '.join(choices)}"
                              f"{closest(str(converted), choices)}")
        kwargs[key] = converted
    return cls(**kwargs)


def _check_trainer_args(trainer: dict[str, Any]) -> None:
    from lightning.pytorch import Trainer

    valid = set(inspect.signature(Trainer.__init__).parameters) - {"self"}
    for key in trainer:
        if key not in valid:
            raise RecipeError(f"trainer.{key}: not a lightning.Trainer argument{closest(key, valid)}")


def load_recipe(source: str | Path | dict[str, Any], overrides: list[str] | None = None) -> Recipe:
    """Load a recipe from a path, a bundled name, or a dict, then apply ``a.b=value`` overrides.

    Raises:
        RecipeError: one line naming the file and the key path, with the closest valid names.
    """
    if isinstance(source, dict):
        raw, label = source, "<dict>"
    else:
        path = find_recipe(str(source))
        label = str(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise RecipeError(f"{label}: not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise RecipeError(f"{label}: the top level must be a mapping")
    raw = yaml.safe_load(yaml.safe_dump(raw))  # deep copy, plain types only
    try:
        for key, value in parse_overrides(overrides or []).items():
            _apply_override(raw, key, value)
        recipe = _build(Recipe, raw, "")
        _check_trainer_args(recipe.trainer)
        if not recipe.data.train:
            raise RecipeError("data.train: at least one training source is needed")
    except RecipeError as exc:
        raise RecipeError(f"{label}: {exc}") from None
    except (IndexError, ValueError, TypeError, AttributeError) as exc:
        raise RecipeError(f"{label}: bad override: {exc}") from None
    return recipe


def validate_components(recipe: Recipe, registry: Any) -> None:
    """Check that every component the recipe names is registered."""
    from tempering.plugin_manager import ComponentError

    template = recipe.chat_template
    checks = [("masking", recipe.masking, "masking"), ("objective", recipe.objective.name,
                                                       "objective.name")]
    if template != "tokenizer" and not template.endswith(".jinja") and "/" not in template:
        checks.append(("chat_template", template, "chat_template"))
    for kind, name, key in checks:
        try:
            registry.get(kind, name)
        except ComponentError as exc:
            raise RecipeError(f"{key}: {exc}") from None


def to_dict(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe as plain data (for W&B config and run summaries)."""
    return dataclasses.asdict(recipe)
