"""Recipe sections of the stages that grow instruction data: ``self_instruct`` (the
``self_instruct`` and ``instances`` stages) and ``evolve``. The prompt wordings are
tempering's own, and each is a recipe key a recipe may replace."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tempering.recipe.schema_base import ComponentConfig, DataSource, _NamesComponents, doc

__all__ = ["SelfInstructConfig", "EvolveConfig", "INSTRUCTION_PROMPT", "CLASSIFY_PROMPT",
           "INSTANCE_PROMPT", "LABEL_FIRST_PROMPT"]

INSTRUCTION_PROMPT = (
    "Write {count} new tasks for an AI assistant. Each is one instruction a person might give; "
    "vary the topic, the kind of task (open questions, writing, classification, editing, "
    "reasoning, coding, ...) and the wording. A task may need an input, but write only the "
    "instruction. Number them, continuing this list:\n\n{examples}\n")
CLASSIFY_PROMPT = (
    "Is the task a classification task, one whose answer is one of a small, fixed set of "
    "labels? Answer Yes or No.\n\n{examples}Task: {instruction}\nClassification:")
INSTANCE_PROMPT = (
    "Write up to {count} examples of the task. Each is \"Example N\", then an \"Input:\" line "
    "(\"Input: <none>\" when the task needs no input) and an \"Output:\" line with a correct, "
    "complete answer.\n\n{examples}Task: {instruction}\n")
LABEL_FIRST_PROMPT = (
    "The task is a classification task. Write up to {count} examples, each for one of its "
    "labels: \"Example N\", then a \"Class label:\" line, then an \"Input:\" line that has that "
    "label.\n\n{examples}Task: {instruction}\n")


def _filters(*picks: Any) -> Any:
    return lambda: [ComponentConfig(p) if isinstance(p, str) else ComponentConfig(*p)
                    for p in picks]


@dataclass
class SelfInstructConfig(_NamesComponents):
    """Self-Instruct: a ``self_instruct`` stage grows instructions from seed tasks; an
    ``instances`` stage writes inputs and outputs for them (classification tasks label first)."""

    seeds: list[DataSource] = doc(
        "Seed tasks: JSONL in the 175-task format (`instruction`, `instances` with `input` and "
        "`output`, `is_classification`), or records with `instruction` and optionally `input` "
        "and `output`.", factory=list)
    num_instructions: int = doc("Grow until this many new instructions are kept.", 100,
                                minimum=1)
    max_steps: int = doc("Stop after this many steps even if fewer were kept (the summary "
                         "says so).", 1000, minimum=1)
    prompts_per_step: int = doc("Prompts sent to the generator per step (a step is appended "
                                "and synced to disk as a whole).", 8, minimum=1)
    seed_examples: int = doc("Seed instructions shown in each prompt.", 6, minimum=0)
    machine_examples: int = doc("Instructions grown earlier shown in each prompt (seed ones "
                                "while there are too few).", 2, minimum=0)
    request_count: int = doc("New instructions each prompt asks for (`{count}`).", 8, minimum=1)
    prompt: str = doc("The instruction prompt: `{examples}` (a numbered list), `{count}`.",
                      INSTRUCTION_PROMPT)
    filters: list[ComponentConfig] = doc(
        "Filters of new instructions, in order (novelty and duplicates last, so they compare "
        "with instructions that pass everything).",
        factory=_filters("starts_alnum", "word_length", "keywords", "exact_duplicate",
                         "rouge_novelty"))
    classify_prompt: str = doc("Asks whether a task is a classification task: `{examples}` "
                               "(seed tasks with their answer), `{instruction}`.",
                               CLASSIFY_PROMPT)
    classify_examples: int = doc("Seed tasks shown in the classification prompt.", 8,
                                 minimum=0)
    instance_prompt: str = doc("Input-first instance prompt: `{examples}`, `{instruction}`, "
                               "`{count}`.", INSTANCE_PROMPT)
    label_first_prompt: str = doc("Output-first prompt for classification tasks.",
                                  LABEL_FIRST_PROMPT)
    instance_examples: int = doc("Seed tasks (with their instances) shown per instance "
                                 "prompt.", 3, minimum=0)
    instances_per_task: int = doc("Instances each instance prompt asks for.", 3, minimum=1)
    instance_filters: list[ComponentConfig] = doc(
        "Filters of the instances (`text` is the output).",
        factory=_filters(("word_length", {"field": "output", "min_words": 1, "max_words": 400}),
                         ("exact_duplicate", {"field": ["instruction", "input", "output"]}),
                         "conflicting_outputs"))
    chunk_size: int = doc("Instructions per chunk of an `instances` stage.", 16, minimum=1)


@dataclass
class EvolveConfig(_NamesComponents):
    """Evol-Instruct: an ``evolve`` stage rewrites instructions for ``rounds`` rounds, answers
    each, and eliminates failed evolutions (whose parents go on to the next round)."""

    seeds: list[DataSource] = doc(
        "Instructions to evolve: records with `instruction` (and optionally `input`, appended "
        "to it), e.g. alpaca data or seed tasks.", factory=list)
    max_seeds: int | None = doc("Evolve at most this many seed instructions.", minimum=1)
    rounds: int = doc("Rounds of evolution (each evolves the previous round's instructions).",
                      4, minimum=1)
    operators: list[ComponentConfig] = doc(
        "Evolution operators; each instruction of a round gets one, drawn uniformly (seeded).",
        factory=_filters("add_constraints", "deepen", "concretize", "increase_reasoning",
                         "complicate_input", "breadth"))
    filters: list[ComponentConfig] = doc(
        "Elimination filters of an evolved instruction and its response, in order.",
        factory=_filters("copies_prompt", "refusal", "stopwords_only", "no_gain"))
    chunk_size: int = doc("Instructions per chunk (appended and synced to disk at a time).", 16,
                          minimum=1)
