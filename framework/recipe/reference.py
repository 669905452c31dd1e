"""The recipe reference, generated from the schema's dataclasses so it never drifts from them:
every key with its type, default and documentation (``tempering recipe-schema``), and a JSON
Schema of the same keys for editors (``tempering recipe-schema --json``)."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from typing import Any

__all__ = ["RecipeKey", "recipe_keys", "json_schema", "markdown_reference"]


@dataclass(frozen=True)
class RecipeKey:
    """One recipe key: its dotted path (``[]`` for every item of a list), type, default,
    documentation, and the values it accepts (empty: any of its type)."""

    path: str
    type: str
    default: str
    doc: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None


def _hints(cls: type) -> dict[str, Any]:
    import sys

    return typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _args(tp: Any) -> tuple[Any, ...]:
    return typing.get_args(tp)


def _is_optional(tp: Any) -> bool:
    return (typing.get_origin(tp) in (typing.Union, types.UnionType)
            and type(None) in _args(tp))


def _strip_none(tp: Any) -> Any:
    rest = [a for a in _args(tp) if a is not type(None)]
    return rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]  # noqa: UP007


def _type_name(tp: Any) -> str:
    from tempering.recipe.schema_base import ComponentConfig

    if _is_optional(tp):
        return f"{_type_name(_strip_none(tp))} | null"
    if tp is ComponentConfig:
        return "component (name, or {name, ...options})"
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return f"list[{', '.join(_type_name(a) for a in _args(tp) if a is not Ellipsis)}]"
    if origin is dict:
        return f"mapping[{', '.join(_type_name(a) for a in _args(tp))}]"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in _args(tp))
    if _is_dataclass_type(tp):
        return "section"
    return {Any: "any", str: "str", int: "int", float: "float", bool: "bool"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _plain(value: Any) -> Any:
    """A default as a recipe would write it (a component as its name)."""
    from tempering.recipe.schema_base import ComponentConfig

    if isinstance(value, ComponentConfig):
        return value.name if not value.options else {"name": value.name, **value.options}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return json.dumps(_plain(f.default))
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(value) and not hasattr(value, "options"):
            return "(section)"
        return json.dumps(_plain(value))
    return "(required)"


def _walk(cls: type, prefix: str, seen: set[type]) -> list[RecipeKey]:
    keys: list[RecipeKey] = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        path = f"{prefix}{f.name}"
        keys.append(RecipeKey(path, _type_name(tp), _default(f), f.metadata.get("doc", ""),
                              tuple(f.metadata.get("choices") or ()), f.metadata.get("minimum")))
        inner = _strip_none(tp) if _is_optional(tp) else tp
        if typing.get_origin(inner) is list and _args(inner) and _is_dataclass_type(_args(inner)[0]):
            item = _args(inner)[0]
            if item not in seen:  # stages: the keys of a Stage, listed once under recipe keys
                keys += _walk(item, f"{path}[].", seen | {item})
        elif _is_dataclass_type(inner) and inner.__name__ != "ComponentConfig":
            keys += _walk(inner, f"{path}.", seen | {inner})
    return keys


def recipe_keys() -> list[RecipeKey]:
    """Every key of a recipe, in schema order; a stage's keys (``stages[].``) are the top-level
    training keys, listed once."""
    from tempering.recipe.schema import Recipe, Stage

    return _walk(Recipe, "", {Recipe, Stage})


def _schema_of(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    from tempering.recipe.schema_base import ComponentConfig

    if _is_optional(tp):
        return {"anyOf": [_schema_of(_strip_none(tp), defs), {"type": "null"}]}
    if tp is ComponentConfig:
        return {"anyOf": [{"type": "string"},
                          {"type": "object", "properties": {"name": {"type": "string"}},
                           "required": ["name"], "additionalProperties": True}]}
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        items = [a for a in _args(tp) if a is not Ellipsis]
        return {"type": "array", **({"items": _schema_of(items[0], defs)} if items else {})}
    if origin is dict:
        return {"type": "object"}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_schema_of(a, defs) for a in _args(tp)]}
    if _is_dataclass_type(tp):
        if tp.__name__ not in defs:
            defs[tp.__name__] = {}  # recursion guard, filled below
            defs[tp.__name__] = _object_schema(tp, defs)
        return {"$ref": f"#/$defs/{tp.__name__}"}
    simple = {str: "string", int: "integer", float: "number", bool: "boolean"}
    return {"type": simple[tp]} if tp in simple else {}


def _object_schema(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        prop = _schema_of(hints[f.name], defs)
        if f.metadata.get("doc"):
            prop["description"] = f.metadata["doc"]
        if f.metadata.get("choices"):
            prop["enum"] = list(f.metadata["choices"])
        if f.metadata.get("minimum") is not None:
            prop["minimum"] = f.metadata["minimum"]
        default = _default(f)
        if not default.startswith("("):
            prop["default"] = json.loads(default)
        props[f.name] = prop
    return {"type": "object", "description": (cls.__doc__ or "").strip().split("\n\n")[0],
            "properties": props, "additionalProperties": False}


def json_schema() -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of a recipe file, for editors' completion and checks."""
    from tempering.recipe.schema import Recipe

    defs: dict[str, Any] = {}
    root = _object_schema(Recipe, defs)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "tempering recipe", **root, "$defs": defs}


def markdown_reference() -> str:
    """Every recipe key as a markdown table (``docs/recipe-reference.md``)."""
    lines = ["# Recipe reference", "",
             "Generated from the recipe schema by `tempering recipe-schema`; a test fails when "
             "this file and the code disagree. `tempering recipe-schema --json` prints the same "
             "keys as a JSON Schema for editors. `trainer` takes any `lightning.Trainer` "
             "argument; a component key takes a registered name (`tempering plugins` lists "
             "them) or `{name: ..., option: value}`.", "",
             "| key | type | default | what it does |", "| --- | --- | --- | --- |"]
    for key in recipe_keys():
        text = key.doc.replace("|", "\\|").replace("\n", " ")
        if key.choices:
            text += f" One of: {', '.join(f'`{c}`' for c in key.choices)}."
        if key.minimum is not None:
            text += f" At least {key.minimum:g}."
        default = key.default.replace("|", "\\|")
        lines.append(f"| `{key.path}` | {key.type.replace('|', 'or')} | `{default}` | {text} |")
    return "\n".join(lines) + "\n"
