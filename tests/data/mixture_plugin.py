"""A third-party-style plugin for the mixture tests: one formatter with three phrasings and
two procedural tasks whose records are numbers (so any record can be checked by eye)."""

from __future__ import annotations

import random

from tempering import BadRecordError, Task, TaskFormatter, hookimpl

PHRASINGS = ("Echo {x}.", "Say {x} back.", "What was {x}?")


def echo(record: dict, phrasing: int, upper: bool = False) -> tuple[str, str]:
    if "x" not in record:
        raise BadRecordError("missing_field", "missing field 'x'", "x")
    answer = str(record.get("y", record["x"]))
    return PHRASINGS[phrasing].format(x=record["x"]), answer.upper() if upper else answer


def numbers(rng: random.Random, width: int = 6) -> dict:
    return {"x": str(rng.randrange(10 ** width))}


def small(rng: random.Random) -> dict:
    return {"x": str(rng.randrange(300))}  # a small input space: records repeat


@hookimpl
def register_task_formatters() -> list[TaskFormatter]:
    return [TaskFormatter("echo", ("x",), len(PHRASINGS), echo, "repeats x")]


@hookimpl
def register_tasks() -> list[Task]:
    return [Task("numbers", "echo", numbers, "echo", "six-digit numbers"),
            Task("small", "echo", small, "echo", "numbers below 300")]
