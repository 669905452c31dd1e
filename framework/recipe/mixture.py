"""The recipe's ``data.mixture`` section: instruction tuning over a weighted mixture of tasks
(FLAN-style), with held-out tasks and phrasings for evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tempering.recipe.schema_base import ComponentConfig, _NamesComponents, component, doc

__all__ = ["MIXING", "MixtureTask", "MixtureConfig"]

MIXING = ("explicit", "examples_proportional", "temperature")


@dataclass
class MixtureTask(_NamesComponents):
    """One task of a mixture: a registered procedural task, or a dataset read like a data
    source, and the formatter that turns its records into instructions."""

    name: str = doc("The task's name in metrics and the summary (default: `task`, or the "
                    "dataset's file or hub name).", "")
    task: ComponentConfig = component(
        "", "Registered procedural task (`tempering plugins` lists them); its records are "
        "generated, seeded by `train.seed` and the task's name. Options go to its `generate`.")
    path: str = doc("A dataset instead: JSON/JSONL file, folder, `bundled:...` or hub id, "
                    "read like `data.train` sources (its records, not conversations).", "")
    split: str = doc("datasets split to read (hub ids and datasets directories).", "train")
    subset: str | None = doc("datasets configuration name (hub ids).")
    fields: dict[str, Any] = doc("Map the formatter's field names to the dataset's keys, e.g. "
                                 "{text: sentence, label: label}.", factory=dict)
    formatter: ComponentConfig = component(
        "", "Registered task formatter (default: the procedural task's own); options go to its "
        "`format` (e.g. `choices` for classification labels given as numbers).")
    weight: float = doc("The task's weight with `sampling: explicit`.", 1.0, minimum=0)
    records: int | None = doc("Records in the task's dataset: a procedural task generates this "
                              "many (default 5000), a dataset is read up to this many (default: "
                              "all). Examples-proportional mixing uses this size.", minimum=1)


@dataclass
class MixtureConfig:
    tasks: list[MixtureTask] = doc("The tasks trained on (empty: no mixture).", factory=list)
    held_out_tasks: list[MixtureTask] = doc("Tasks never trained on, evaluated zero-shot (the "
                                            "`held_out_tasks` split).", factory=list)
    sampling: str = doc(
        "How often each task is drawn: `explicit` (by `weight`), `examples_proportional` (by "
        "its number of records, capped at `cap`: FLAN's K) or `temperature` (by that capped "
        "size to the power 1/`temperature`; T=1 is examples-proportional, larger T flattens "
        "the mixture towards uniform).", "examples_proportional", choices=MIXING)
    cap: int | None = doc("Examples-proportional and temperature mixing count a task as at most "
                          "this many records (FLAN's K; null: no cap).", minimum=1)
    temperature: float = doc("The mixing temperature of `sampling: temperature`.", 1.0,
                             minimum=0)
    examples: int = doc("Training examples drawn from the mixture (each example's task is "
                        "drawn by the mixing rates; a task's records repeat when it is drawn "
                        "more often than it has records).", 10000, minimum=1)
    held_out_phrasings: list[int] = doc(
        "Phrasing indices of the formatters never trained on; the trained tasks are evaluated "
        "with them (the `held_out_phrasings` split).", factory=list)
    fewshot_share: float = doc("Share of training examples in few-shot form (the rest are "
                               "zero-shot).", 0.0, minimum=0)
    fewshot_k: int = doc("Exemplars in a few-shot example (other records of the same task, in "
                         "the same phrasing).", 2, minimum=1)
    eval_examples: int = doc("Held-out records per task and split (never trained on).", 50,
                             minimum=0)
    eval_shots: list[int] = doc("Evaluate with these numbers of exemplars (0: zero-shot).",
                                factory=lambda: [0])
    system_prompt: str | None = doc("System message of every mixture conversation.")
