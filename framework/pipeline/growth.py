"""What the stages that grow instruction data share: seed tasks read and checked, the parsers of
a generator's numbered instructions and of its instances, and the rejects they produce.

A parser never guesses: an item it cannot read is a reject with its reason (``parse``), so
every candidate the generator wrote is in the stage's output or its ``rejects.jsonl``.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tempering.recipe import DataSource

__all__ = ["Task", "read_tasks", "Parsed", "parse_instructions", "parse_instances",
           "numbered", "user_turn", "ask_function", "count", "split_kept", "growth_summary"]


@dataclass(frozen=True)
class Task:
    """A seed task: an instruction, its instances (input, output) and whether it is a
    classification task (None: not known)."""

    id: str
    instruction: str
    instances: tuple[tuple[str, str], ...] = ()
    is_classification: bool | None = None


def _task(origin: str, index: int, record: Any) -> Task:
    if not isinstance(record, dict):
        raise ValueError(f"{origin}: a seed task is a JSON object, not {type(record).__name__}")
    instruction = record.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(f"{origin}, field instruction: missing or empty")
    raw = record.get("instances")
    if raw is None and ("input" in record or "output" in record):
        raw = [{"input": record.get("input") or "", "output": record.get("output") or ""}]
    instances = []
    for j, inst in enumerate(raw or []):
        if not isinstance(inst, dict) or not isinstance(inst.get("output", ""), str) \
                or not isinstance(inst.get("input", ""), str):
            raise ValueError(f"{origin}, field instances[{j}]: an object with string `input` "
                             "and `output`")
        instances.append((inst.get("input", ""), inst.get("output", "")))
    label = record.get("is_classification")
    if label is not None and not isinstance(label, bool):
        raise ValueError(f"{origin}, field is_classification: true or false, not {label!r}")
    return Task(str(record.get("id") or f"seed-{index}"), instruction.strip(), tuple(instances),
                label)


def read_tasks(sources: list[DataSource], key: str, on_bad_record: str = "error") -> list[Task]:
    """The seed tasks of ``sources`` (recipe key ``key``, for errors); a bad record stops the
    run naming its file, line and field, or with ``on_bad_record: skip`` is counted."""
    from tempering.data.sources import DataError, read_source

    tasks: list[Task] = []
    skipped = 0
    for s, source in enumerate(sources):
        for origin, record in read_source(source):
            try:
                if isinstance(record, Exception):
                    raise ValueError(f"{origin}: {record}")
                tasks.append(_task(origin, len(tasks), record))
            except ValueError as exc:
                if on_bad_record == "error":
                    raise DataError(f"{key}[{s}]: {exc}") from None
                skipped += 1
    if skipped:
        print(f"tempering: {key}: skipped {skipped} bad seed records", file=sys.stderr)
    if not tasks:
        raise DataError(f"{key}: no seed task was read")
    return tasks


@dataclass
class Parsed:
    """What a parser read: items, and the rejects (``{"text", "reason"}``) it could not use."""

    items: list[Any] = field(default_factory=list)
    rejects: list[dict[str, str]] = field(default_factory=list)


_ITEM = re.compile(r"^\s*(?:\*\*)?(?:(?:task|instruction)\s*)?#?(\d{1,3})\s*[.):\-]\s*(?:\*\*)?"
                   r"\s*(.*)$", re.IGNORECASE)
_LABEL = re.compile(r"^\s*(?:instruction|task)\s*:\s*", re.IGNORECASE)


def parse_instructions(text: str, truncated: bool) -> Parsed:
    """The numbered items of a generator's answer (``3. ...``, ``Task 3: ...``, ``3) ...``);
    lines after an item's first belong to it. Text before the first item is not an
    instruction; with no numbered item at all, the whole answer is one reject. When the answer
    was cut off by its token budget (``truncated``), its last item is a reject."""
    items: list[str] = []
    for line in text.splitlines():
        match = _ITEM.match(line)
        if match:
            items.append(_LABEL.sub("", match.group(2)).strip())
        elif items and line.strip():
            items[-1] = (items[-1] + "\n" + line.strip()).strip()
    out = Parsed()
    if not items:
        out.rejects.append({"text": text.strip()[:500], "reason": "no numbered instruction"})
        return out
    if truncated:
        out.rejects.append({"text": items.pop(), "reason": "cut off by max_new_tokens"})
    for item in items:
        if item:
            out.items.append(item)
        else:
            out.rejects.append({"text": "", "reason": "an empty item"})
    return out


_EXAMPLE = re.compile(r"^\s*(?:\*\*)?example\s*\d*\s*[:.]?\s*(?:\*\*)?\s*$", re.IGNORECASE)
_FIELD = re.compile(r"^\s*(?:\*\*)?(input|output|class label|label)\s*(?:\*\*)?\s*:\s*(.*)$",
                    re.IGNORECASE)
_NONE = {"", "<none>", "none", "n/a", "<noinput>", "no input", "(none)"}


def _instance(fields: dict[str, str], label_first: bool) -> tuple[str, str] | str:
    """(input, output), or why not."""
    value = {k: v.strip() for k, v in fields.items()}
    inp = "" if value.get("input", "").lower() in _NONE else value.get("input", "")
    if label_first:
        label = value.get("class label", value.get("label", ""))
        if not label:
            return "no class label"
        return (inp, label) if inp else "no input for the label"
    return (inp, value["output"]) if value.get("output") else "no output"


def parse_instances(text: str, truncated: bool, label_first: bool = False) -> Parsed:
    """Instances from ``Example N`` blocks of ``Input:`` / ``Output:`` (``Class label:`` /
    ``Input:`` for a classification task written label first) lines; a field's later lines
    belong to it, and a field seen twice starts the next instance. An instance missing its
    output (its label or input, label first) is a reject; so is the last one of an answer cut
    off by its token budget."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    last = ""
    for line in text.splitlines():
        if _EXAMPLE.match(line):
            current, last = None, ""
            continue
        match = _FIELD.match(line)
        if match:
            name = match.group(1).lower()
            name = "class label" if name == "label" else name
            if current is None or name in current:
                current = {}
                blocks.append(current)
            current[name], last = match.group(2), name
        elif current is not None and last:
            current[last] += "\n" + line
    out = Parsed()
    if not blocks:
        out.rejects.append({"text": text.strip()[:500], "reason": "no Input/Output lines"})
        return out
    if truncated:
        cut = blocks.pop()
        out.rejects.append({"text": "\n".join(f"{k}: {v}" for k, v in cut.items()),
                            "reason": "cut off by max_new_tokens"})
    for block in blocks:
        instance = _instance(block, label_first)
        if isinstance(instance, str):
            out.rejects.append({"text": "\n".join(f"{k}: {v}" for k, v in block.items()),
                                "reason": instance})
        else:
            out.items.append(instance)
    return out


def numbered(instructions: list[str]) -> str:
    return "".join(f"{i}. {text}\n" for i, text in enumerate(instructions, start=1))


def user_turn(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def ask_function(generator: Any, params: Any) -> Any:
    """``ask(prompts, max_new_tokens) -> answers``: greedy, one answer per prompt."""

    def ask(prompts: list[str], max_new_tokens: int) -> list[str]:
        greedy = dataclasses.replace(params, n=1, temperature=0.0,
                                     max_new_tokens=max_new_tokens)
        answers = generator.generate([user_turn(p) for p in prompts], greedy)
        return [a[0].text for a in answers]

    return ask


def count(items: list[dict[str, Any]], key: str) -> dict[str, int]:
    return dict(Counter(str(i.get(key)) for i in items))


def split_kept(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]],
                                                       list[dict[str, Any]]]:
    """The accepted records and the rejected ones, each in order."""
    return [r for r in records if r["accepted"]], [r for r in records if not r["accepted"]]


def growth_summary(stage: str, round_: int, kept: list[dict[str, Any]],
                   rejects: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The summary every stage that grows data starts from: candidates, kept, rejected, and
    the rejections by filter."""
    return {"stage": stage, "round": round_, "candidates": len(kept) + len(rejects),
            "kept": len(kept), "rejected": len(rejects),
            "rejected_by": count(rejects, "filtered_by"), **extra}
