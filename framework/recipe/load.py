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

from tempering.components import KINDS
from tempering.plugin_manager import closest
from tempering.recipe.schema import (
    ComponentConfig,
    DataConfig,
    DataSource,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    Recipe,
    Stage,
    TrainConfig,
    WandbConfig,
)

__all__ = [
    "Recipe", "RecipeError", "DataSource", "DataConfig", "ModelConfig", "ComponentConfig",
    "OptimConfig", "TrainConfig", "EvalConfig", "WandbConfig", "Stage", "stages_of",
    "bundled_recipes", "find_recipe", "load_recipe", "parse_overrides", "resolve_bundled",
    "validate_components", "picks", "check_locations", "to_dict", "STAGE_PATH", "stage_ids",
    "check_stage_references",
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
        try:
            parsed[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as exc:
            problem = str(exc).strip().splitlines()[0]
            raise RecipeError(f"override {item!r}: the value is not valid YAML ({problem})"
                              ) from None
    return parsed


# Recipe keys that pick a component: `masking: x` with `masking.n=3` becomes {name: x, n: 3}.
_COMPONENT_KEYS = frozenset(key for kind in KINDS for key in kind.recipe_keys)


def _key_pattern(parts: list[str]) -> str:
    """``data.train.0.format`` -> ``data.train[].format`` (the form KINDS gives keys in)."""
    out = ""
    for part in parts:
        out += "[]" if part.isdigit() else f".{part}" if out else part
    return out


def _apply_override(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node: Any = raw
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth]) or "the recipe"
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"override {dotted}: {where} is a list of {len(node)}; "
                                  f"{part!r} is not one of its indices 0..{len(node) - 1}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                elif isinstance(node[part], str) and _key_pattern(parts[:depth + 1]) in _COMPONENT_KEYS:
                    node[part] = {"name": node[part]}  # `masking: x` + `masking.n=3`
                node = node[part]
        else:
            raise RecipeError(f"override {dotted}: {where} is {node!r}, not a mapping or a list")


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
        if isinstance(tp, type) and tp is ComponentConfig and isinstance(value, str):
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
    if cls is ComponentConfig:  # `objective: {name: soft_kl, temperature: 2}` -> options
        if not isinstance(raw.get("name"), str) or not raw["name"]:
            raise RecipeError(f"{where}.name: missing (a registered name, or a mapping with "
                              "`name` and options)")
        raw = dict(raw)
        options = dict(raw.pop("options", None) or {})
        options.update({k: raw.pop(k) for k in list(raw) if k != "name"})
        raw["options"] = options
    kwargs = {}
    for key, value in raw.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            raise RecipeError(f"{path}: unknown key{closest(key, fields)}")
        if hints[key] is ComponentConfig and isinstance(value, dict) and "name" not in value:
            value = {"name": fields[key].default_factory().name, **value}  # type: ignore[misc,operator]
        converted = _convert(value, hints[key], path)
        minimum = fields[key].metadata.get("minimum")
        if minimum is not None and isinstance(converted, (int, float)) and converted < minimum:
            raise RecipeError(f"{path}: {converted!r} is below the smallest allowed value "
                              f"{minimum:g}")
        choices = fields[key].metadata.get("choices")
        if choices and converted not in choices:
            raise RecipeError(f"{path}: {converted!r} is not one of {', '.join(choices)}"
                              f"{closest(str(converted), choices)}")
        kwargs[key] = converted
    return cls(**kwargs)


def _allowed(annotation: Any) -> tuple[Any, ...] | None:
    """The plain values an annotation admits (types and Literal values), or None if it admits
    anything we do not check (objects, containers)."""
    if annotation in (int, float, bool, str, type(None)):
        return (annotation,)
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        parts = [_allowed(a) for a in typing.get_args(annotation)]
        return None if any(p is None for p in parts) else tuple(x for p in parts if p for x in p)
    return None


def _admits(value: Any, allowed: tuple[Any, ...]) -> bool:
    for a in allowed:
        if isinstance(a, type):
            if a is float and isinstance(value, int) and not isinstance(value, bool):
                return True
            if isinstance(value, a) and not (a is int and isinstance(value, bool)):
                return True
        elif value == a and type(value) is type(a):
            return True
    return False


_STAGE_KEYS = tuple(f.name for f in dataclasses.fields(Stage))
# The sections with components each stage kind uses (the others are not checked in it).
_USES = {"train": {"data", "chat_template", "masking", "objective", "eval"},
         "generate": {"generate", "chat_template"}, "score": {"score"}, "filter": {"filter"},
         "eval": {"eval", "generate", "score", "chat_template", "data"},
         "self_instruct": {"self_instruct", "generate", "chat_template"},
         "instances": {"self_instruct", "generate", "chat_template"},
         "evolve": {"evolve", "generate", "chat_template"}}
# Keys that belong to one stage, never merged from the top level into every stage.
_OWN_KEYS = ("kind", "id", "input", "model_from", "in_rounds")


def _merge(base: Any, own: Any) -> Any:
    """``own`` over ``base``: mappings merge key by key, anything else replaces."""
    if isinstance(base, dict) and isinstance(own, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in own.items()}}
    return own


def _merged_stages(raw: dict[str, Any]) -> list[Any]:
    """Each stage's own keys merged over the top-level stage keys (its defaults)."""
    if not isinstance(raw["stages"], list):
        raise RecipeError("stages: expected a list of stages")
    defaults = {k: raw[k] for k in _STAGE_KEYS if k in raw and k not in _OWN_KEYS}
    out = []
    for i, stage in enumerate(raw["stages"]):
        if not isinstance(stage, dict):
            raise RecipeError(f"stages[{i}]: expected a mapping with a kind, got {stage!r}")
        out.append(_merge(defaults, stage))
    return out


def stages_of(recipe: Recipe) -> list[Stage]:
    """The recipe's stages; a recipe without ``stages`` is one training stage of its top-level
    keys."""
    if recipe.stages:
        return list(recipe.stages)
    return [Stage(**{k: getattr(recipe, k) for k in _STAGE_KEYS})]


def _prefixed_stages(recipe: Recipe) -> list[tuple[str, Any]]:
    """Each stage with the prefix of its keys in errors (none for the one-stage layout)."""
    if recipe.stages:
        return [(f"stages[{i}].", stage) for i, stage in enumerate(recipe.stages)]
    return [("", recipe)]


def _check_stage_sections(stage: Stage, where: str) -> None:
    """The sections a stage's kind needs are there."""
    needs = {"train": (stage.data.train or stage.data.mixture.tasks, "data.train",
                       "at least one training source (or data.mixture.tasks)"),
             "generate": (stage.generate.prompts, "generate.prompts", "at least one prompt source"),
             "score": (stage.score.scorers, "score.scorers", "at least one scorer"),
             "filter": (stage.filter.filters, "filter.filters", "at least one filter"),
             "eval": (stage.score.scorers, "score.scorers", "at least one scorer"),
             "self_instruct": (stage.self_instruct.seeds, "self_instruct.seeds",
                               "at least one source of seed tasks"),
             "instances": (True, "", ""),
             "evolve": (stage.evolve.seeds, "evolve.seeds",
                        "at least one source of instructions to evolve")}
    present, key, what = needs[stage.kind]
    if not present:
        raise RecipeError(f"{where}{key}: {what} is needed by a {stage.kind} stage")
    if stage.kind == "eval" and not (stage.eval.prompts or stage.data.validation):
        raise RecipeError(f"{where}eval.prompts: an eval stage needs held-out prompts "
                          "(eval.prompts or data.validation)")
    weights = stage.score.weights
    if weights and len(weights) != len(stage.score.scorers):
        raise RecipeError(f"{where}score.weights: {len(weights)} weights for "
                          f"{len(stage.score.scorers)} scorers")


STAGE_PATH = "stage:"
# The stages whose output is samples.
_SAMPLE_KINDS = ("generate", "score", "filter", "eval", "self_instruct", "instances", "evolve")


def stage_ids(stages: list[Stage]) -> list[str]:
    """Each stage's id: its own ``id``, else its kind, numbered (``train-2``) where several
    stages without an id share a kind."""
    kinds = [s.kind for s in stages if not s.id]
    return [s.id or (s.kind if kinds.count(s.kind) == 1 else f"{s.kind}-{i}")
            for i, s in enumerate(stages)]


def check_stage_references(recipe: Recipe) -> None:
    """Stage ids are unique; ``input``, ``model_from``, ``stage:`` paths and ``in_rounds``
    name stages and rounds that exist (an input and a data path: an earlier stage)."""
    ids: dict[str, int] = {}
    for i, (stage, sid) in enumerate(zip(recipe.stages, stage_ids(recipe.stages), strict=True)):
        if sid in ids:
            raise RecipeError(f"stages[{i}].id: {sid!r} is also stages[{ids[sid]}]'s; give "
                              "each stage its own id")
        ids[sid] = i
        earlier = list(ids)[:-1]

        def known(key: str, value: str, choices: list[str], i: int = i) -> None:
            if value not in choices:
                raise RecipeError(f"stages[{i}].{key}: no earlier stage {value!r} of that kind"
                                  f"{closest(value, choices) if choices else ''}")

        producers = [s for s in earlier if recipe.stages[ids[s]].kind in _SAMPLE_KINDS]
        if stage.input is not None:
            known("input", stage.input, producers)
        elif stage.kind in ("score", "filter", "instances"):
            before = recipe.stages[i - 1] if i else None
            if before is None or before.kind not in _SAMPLE_KINDS:
                raise RecipeError(f"stages[{i}].input: a {stage.kind} stage reads the samples of "
                                  "an earlier stage that writes samples; the stage before it "
                                  "is none, so name one")
        if stage.model_from not in ("latest", "recipe"):
            trained = [s for s in earlier if recipe.stages[ids[s]].kind == "train"]
            known("model_from", stage.model_from, trained)
        for section in ("train", "validation"):
            for j, source in enumerate(getattr(stage.data, section)):
                if source.path.startswith(STAGE_PATH):
                    known(f"data.{section}[{j}].path", source.path[len(STAGE_PATH):],
                          producers)
        for r in stage.in_rounds:
            if not 1 <= r <= recipe.rounds:
                raise RecipeError(f"stages[{i}].in_rounds: round {r} is not one of 1.."
                                  f"{recipe.rounds}")
    _check_teacher_stage(recipe, ids)


def _check_teacher_stage(recipe: Recipe, ids: dict[str, int]) -> None:
    """``teacher.name_or_path: stage:<id>`` names a training stage (whose final model is the
    teacher of the stages after it)."""
    path = recipe.teacher.name_or_path if recipe.teacher else ""
    if not path.startswith(STAGE_PATH):
        return
    source = path[len(STAGE_PATH):]
    trained = [s for s, i in ids.items() if recipe.stages[i].kind == "train"]
    if source not in trained:
        raise RecipeError(f"teacher.name_or_path: {path}: no training stage {source!r}"
                          f"{closest(source, trained)}")


def _check_trainer_args(trainer: dict[str, Any], where: str = "") -> None:
    from lightning.pytorch import Trainer

    valid = set(inspect.signature(Trainer.__init__).parameters) - {"self"}
    hints = typing.get_type_hints(Trainer.__init__)
    for key, value in trainer.items():
        if key not in valid:
            raise RecipeError(f"{where}trainer.{key}: not a lightning.Trainer argument"
                              f"{closest(key, valid)}")
        allowed = _allowed(hints.get(key, Any))
        if allowed is not None and key != "strategy" and not _admits(value, allowed):
            kinds = ", ".join(a.__name__ if isinstance(a, type) else repr(a) for a in allowed)
            raise RecipeError(f"{where}trainer.{key}: {value!r} is not one of: {kinds}")


def _looks_local(location: str) -> bool:
    return location.startswith(("/", ".", "~")) or Path(location).suffix in (".json", ".jsonl")


def _check_location(key: str, location: str | None) -> None:
    if location is None or location.startswith(STAGE_PATH):
        return  # another stage's output, resolved when the pipeline runs
    if not location:
        raise RecipeError(f"{key}: missing")
    if location.startswith(BUNDLED_PREFIX):
        try:
            resolve_bundled(location)
        except RecipeError as exc:
            raise RecipeError(f"{key}: {exc}") from None
    elif _looks_local(location) and not Path(location).expanduser().exists():
        raise RecipeError(f"{key}: {location} does not exist")


def check_locations(recipe: Recipe) -> None:
    """Every local data source and model exists, before anything is read (hub ids are not
    checked here). Separate from loading, so a recipe for another machine still validates."""
    for key, sources in (("data.train", recipe.data.train),
                         ("data.validation", recipe.data.validation),
                         ("generate.prompts", recipe.generate.prompts),
                         ("eval.prompts", recipe.eval.prompts),
                         ("eval.conversations", recipe.eval.conversations),
                         ("self_instruct.seeds", recipe.self_instruct.seeds),
                         ("evolve.seeds", recipe.evolve.seeds)):
        for i, source in enumerate(sources):
            _check_location(f"{key}[{i}].path", source.path)
    for key, tasks in (("data.mixture.tasks", recipe.data.mixture.tasks),
                       ("data.mixture.held_out_tasks", recipe.data.mixture.held_out_tasks)):
        for i, task in enumerate(tasks):
            if task.path:
                _check_location(f"{key}[{i}].path", task.path)
    for key, cfg in (("model", recipe.model), ("teacher", recipe.teacher)):
        if cfg is not None:
            _check_location(f"{key}.name_or_path", cfg.name_or_path)
            _check_location(f"{key}.tokenizer", cfg.tokenizer)


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
        if raw.get("stages"):
            raw["stages"] = _merged_stages(raw)
        recipe = _build(Recipe, raw, "")
        if not recipe.stages and recipe.kind != "train":
            raise RecipeError(f"kind: {recipe.kind!r} runs as one of `stages`; a recipe without "
                              "stages is one training stage")
        for where, stage in _prefixed_stages(recipe):
            _check_trainer_args(stage.trainer, where)
            _check_stage_sections(stage, where)
        check_stage_references(recipe)
    except RecipeError as exc:
        raise RecipeError(f"{label}: {exc}") from None
    except (IndexError, ValueError, TypeError, AttributeError) as exc:
        raise RecipeError(f"{label}: bad override: {exc}") from None
    return recipe


def picks(recipe: Any, dotted: str) -> list[tuple[str, ComponentConfig]]:
    """The component configs at a KINDS recipe key (``data.train[].format``), each with its
    key path (``data.train[1].format``)."""
    found: list[tuple[str, Any]] = [("", recipe)]
    for part in dotted.split("."):
        each, part = part.endswith("[]"), part.removesuffix("[]")
        found = [(f"{where}.{part}" if where else part, getattr(node, part))
                 for where, node in found]
        if each:
            found = [(f"{where}[{i}]", item) for where, items in found
                     for i, item in enumerate(items)]
    return found


def validate_components(recipe: Recipe, registry: Any) -> None:
    """Every component the recipe names is registered and takes the options given (kinds and
    their keys from the KINDS table), in every stage; errors name the key path and the
    closest valid names."""
    for kind in KINDS:
        for key in kind.recipe_keys:
            section = key.split(".")[0].removesuffix("[]")
            owners = _prefixed_stages(recipe) if section in _STAGE_KEYS else [("", recipe)]
            for prefix, owner in owners:
                if section in _STAGE_KEYS and section not in _USES[owner.kind]:
                    continue  # a section merged into a stage whose kind does not use it
                for where, picked in picks(owner, key):
                    _check_component(kind, f"{prefix}{where}", picked, registry)
    _check_teacher(recipe, [(prefix, registry.get("objective", stage.objective.name))
                            for prefix, stage in _prefixed_stages(recipe)])


def _check_component(kind: Any, where: str, picked: ComponentConfig, registry: Any) -> None:
    from tempering.plugin_manager import ComponentError

    if not kind.is_name(picked.name):
        return
    try:
        component = registry.get(kind.name, picked.name)
    except ComponentError as exc:
        raise RecipeError(f"{where}: {exc}") from None
    accepted = kind.option_names(component)
    for option in picked.options:
        if accepted is not None and option not in accepted:
            takes = closest(option, accepted) if accepted else "; it takes no options"
            raise RecipeError(f"{where}.{option}: not an option of {kind.name} "
                              f"{picked.name!r}{takes}")


def _check_teacher(recipe: Recipe, objectives: list[tuple[str, Any]]) -> None:
    """A teacher exactly when an objective uses one (never loaded for nothing, never missing);
    it is frozen, so it takes no adapters."""
    if recipe.teacher is not None and recipe.teacher.lora is not None:
        raise RecipeError("teacher.lora: the teacher is frozen; LoRA adapters train the policy "
                          "(model.lora)")
    for prefix, objective in objectives:
        if objective.needs_teacher and recipe.teacher is None:
            raise RecipeError(f"{prefix}objective: {objective.name!r} needs a teacher model; "
                              "set teacher.name_or_path")
    if recipe.teacher is not None and not any(o.needs_teacher for _, o in objectives):
        names = " or ".join(sorted({repr(o.name) for _, o in objectives}))
        raise RecipeError(f"teacher: set, but objective {names} does not use a teacher; "
                          "remove it or pick an objective that does")


def to_dict(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe as plain data (for W&B config and run summaries)."""
    return dataclasses.asdict(recipe)
