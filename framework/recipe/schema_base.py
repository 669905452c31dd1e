"""The building blocks of the recipe schema: documented fields, components picked by name,
and data sources (shared by the schema's sections)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["doc", "ComponentConfig", "component", "DataSource"]


def doc(text: str, default: Any = None, *, choices: tuple[str, ...] = (), factory: Any = None,
        minimum: float | None = None) -> Any:
    meta = {"doc": text, "choices": choices, "minimum": minimum}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ComponentConfig:
    """A component picked by name, with options: ``masking: last_assistant`` or
    ``objective: {name: cross_entropy, label_smoothing: 0.1}`` (keys beside ``name`` are options)."""

    name: str = doc("Registered component name.", "")
    options: dict[str, Any] = doc("Keyword options for the component.", factory=dict)


def component(name: str, text: str) -> Any:
    return doc(text, factory=lambda: ComponentConfig(name))


class _NamesComponents:
    """Code may build configs with plain names (``DataSource(format="alpaca")``), as recipes
    write them: each component field becomes a :class:`ComponentConfig`."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, str) and f.type in ("ComponentConfig", ComponentConfig):
                setattr(self, f.name, ComponentConfig(value))
            elif isinstance(value, list) and f.type == "list[ComponentConfig]":
                setattr(self, f.name, [ComponentConfig(v) if isinstance(v, str) else v
                                       for v in value])


@dataclass
class DataSource(_NamesComponents):
    path: str = doc("JSON/JSONL file, a directory of them, `bundled:data/...`, or a datasets hub id.", "")
    format: ComponentConfig = component(
        "auto", "Registered record format (alpaca, prompt_completion, messages, sharegpt, or a "
        "plugin's), or `auto` to tell it from each record's keys; options go to its `convert`.")
    fields: dict[str, str] = doc("Map canonical field names to this source's keys, e.g. "
                                 "{instruction: question, output: answer}.", factory=dict)
    weight: float = doc("Sampling weight relative to other sources (1.0 = each record once).", 1.0)
    split: str = doc("datasets split to read (hub ids and datasets directories).", "train")
    subset: str | None = doc("datasets configuration name (hub ids).")
    skip_records: int = doc("Skip this many records first (with `max_records`, a slice of a "
                            "file: train on one part, generate on another).", 0, minimum=0)
    max_records: int | None = doc("Read at most this many records.")
    system_prompt: str | None = doc("System message added to conversations that have none.")
