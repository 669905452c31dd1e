"""Builds the bundled data of the Self-Instruct and Evol-Instruct quickstarts.

``python -m tools.build_growth_assets [OUT_DIR]`` writes, under ``framework/assets/data``:

- ``seed_tasks.jsonl``: 20 seed tasks of our own in Self-Instruct's 175-task format (string and
  number puzzles the bundled tokenizer writes compactly), one instance each;
- ``growth_warmup.jsonl``: conversations that teach the bundled tiny model (which ships no
  weights) the formats the stages ask for, with tempering's default prompts: numbered lists of
  instructions (the seeds and two-step compositions of them; a quarter of the compositions
  are held out, so a new one the model writes is growth), classification answers, instances
  input first and label first, evolved instructions, responses, and no-gain judgements.

Deterministic; a test checks the committed files are what this code writes.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tools.build_assets import _word, _write_jsonl

__all__ = ["SEEDS", "seed_tasks", "warmup", "build"]

Op = tuple[str, str, Callable[[str], str], str, bool]  # name, instruction, fn, input kind, class


def _nums(text: str) -> list[int]:
    return [int(x) for x in text.split(", ")]


SEEDS: list[Op] = [
    ("upper", "Write the given words in capital letters.", str.upper, "words", False),
    ("reverse", "Reverse the letters of the given word.", lambda s: s[::-1], "word", False),
    ("repeat", "Repeat the given word three times.", lambda s: " ".join([s] * 3), "word", False),
    ("sort", "Sort the given numbers from smallest to largest.",
     lambda s: ", ".join(map(str, sorted(_nums(s)))), "numbers", False),
    ("add", "Add the two given numbers.", lambda s: str(sum(_nums(s))), "pair", False),
    ("subtract", "Subtract the second given number from the first.",
     lambda s: str(_nums(s)[0] - _nums(s)[1]), "pair", False),
    ("even", "Is the given number even? Answer yes or no.",
     lambda s: "yes" if int(s) % 2 == 0 else "no", "number", True),
    ("larger", "Which of the two given numbers is larger?", lambda s: str(max(_nums(s))),
     "pair", False),
    ("count", "Count the letters of the given word.", lambda s: str(len(s)), "word", False),
    ("initials", "Write the first letter of each given word.",
     lambda s: " ".join(w[0] for w in s.split()), "words", False),
    ("backwards", "Write the given words in reverse order.",
     lambda s: " ".join(reversed(s.split())), "words", False),
    ("dashes", "Join the given words with dashes.", lambda s: "-".join(s.split()), "words",
     False),
    ("palindrome", "Is the given word a palindrome? Answer yes or no.",
     lambda s: "yes" if s == s[::-1] else "no", "word", True),
    ("double", "Double the given number.", lambda s: str(2 * int(s)), "number", False),
    ("last", "Write the last letter of the given word.", lambda s: s[-1], "word", False),
    ("vowel", "Does the given word start with a vowel? Answer yes or no.",
     lambda s: "yes" if s[0] in "aeiou" else "no", "word", True),
    ("largest", "Find the largest of the given numbers.", lambda s: str(max(_nums(s))),
     "numbers", False),
    ("length", "Say how many numbers the given list has.", lambda s: str(len(_nums(s))),
     "numbers", False),
    ("novowels", "Remove the vowels from the given word.",
     lambda s: "".join(c for c in s if c not in "aeiou"), "word", False),
    ("sum", "Add up the given numbers.", lambda s: str(sum(_nums(s))), "numbers", False),
]
# Second steps of a composition: a word (or words) in, words out.
THEN = {"upper": "write it in capital letters", "reverse": "reverse its letters",
        "repeat": "repeat it three times", "novowels": "remove its vowels",
        "dashes": "join the words with dashes", "backwards": "put the words in reverse order"}


def _input(kind: str, rng: random.Random) -> str:
    if kind == "word":
        return _word(rng)
    if kind == "words":
        return " ".join(_word(rng) for _ in range(rng.randint(2, 3)))
    if kind == "number":
        return str(rng.randint(0, 99))
    if kind == "pair":
        return f"{rng.randint(10, 99)}, {rng.randint(0, 9)}"
    return ", ".join(str(rng.randint(0, 9)) for _ in range(rng.randint(3, 5)))


def _compositions() -> list[Op]:
    by = {s[0]: s for s in SEEDS}
    out = []
    for first in ("upper", "reverse", "repeat", "novowels", "dashes", "backwards"):
        for second, phrase in THEN.items():
            if second == first:
                continue
            name, text, fn, kind, _ = by[first]
            g = by[second][2]
            out.append((f"{name}+{second}", f"{text[:-1]}, then {phrase}.",
                        lambda s, f=fn, g=g: g(f(s)), kind, False))
    return out


def seed_tasks(seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i, (name, text, fn, kind, label) in enumerate(SEEDS):
        x = _input(kind, rng)
        out.append({"id": f"seed_task_{i}", "name": name, "instruction": text,
                    "instances": [{"input": x, "output": fn(x)}], "is_classification": label})
    return out


def _chat(user: str, assistant: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user},
                         {"role": "assistant", "content": assistant}]}


def _examples_block(ops: list[Op], rng: random.Random, label_first: bool) -> str:
    lines = []
    for n in range(1, 4):
        _, _, fn, kind, _ = ops[0]
        x = _input(kind, rng)
        lines += [f"Example {n}", f"Class label: {fn(x)}", f"Input: {x}"] if label_first else \
            [f"Example {n}", f"Input: {x}", f"Output: {fn(x)}"]
    return "\n".join(lines)


def warmup(seed: int = 0) -> list[dict[str, Any]]:
    """The warm-up conversations (see the module docstring)."""
    from tempering.pipeline.growth import Task, numbered
    from tempering.pipeline.self_instruct import _classify_examples, _instance_examples
    from tempering.plugin_manager import build_plugin_manager, build_registry
    from tempering.plugins.instruction_filters import NO_GAIN_PROMPT
    from tempering.recipe.growth import (
        CLASSIFY_PROMPT,
        INSTANCE_PROMPT,
        INSTRUCTION_PROMPT,
        LABEL_FIRST_PROMPT,
    )

    rng = random.Random(seed)
    comps = _compositions()
    rng.shuffle(comps)
    seen = comps[: len(comps) * 3 // 4]  # the rest never appear: the model may invent them
    ops = SEEDS + seen
    tasks = [Task(t["id"], t["instruction"], ((t["instances"][0]["input"],
                                                t["instances"][0]["output"]),),
                  t["is_classification"]) for t in seed_tasks()]
    registry = build_registry(build_plugin_manager(entry_points=False))
    operators = [registry.get("evolution_operator", n) for n in
                 ("add_constraints", "deepen", "concretize", "increase_reasoning",
                  "complicate_input", "breadth")]
    out = []
    for _ in range(700):  # instruction lists
        shown = [o[1] for o in rng.sample(ops, 8)]
        new = [o[1] for o in rng.sample([o for o in ops if o[1] not in shown], 8)]
        out.append(_chat(INSTRUCTION_PROMPT.format(examples=numbered(shown), count=8),
                         "".join(f"{i}. {t}\n" for i, t in enumerate(new, start=9)).strip()))
    classify = _classify_examples(tasks, 8)
    for _ in range(300):
        op = rng.choice(ops)
        out.append(_chat(CLASSIFY_PROMPT.format(examples=classify, instruction=op[1]),
                         "Yes" if op[4] else "No"))
    plain, labelled = _instance_examples(tasks, 3, False), _instance_examples(tasks, 3, True)
    for _ in range(700):
        op = rng.choice(ops)
        prompt = LABEL_FIRST_PROMPT if op[4] else INSTANCE_PROMPT
        out.append(_chat(prompt.format(examples=labelled if op[4] else plain,
                                       instruction=op[1], count=3),
                         _examples_block([op], rng, op[4])))
    for _ in range(600):
        op, x = rng.choice(ops), None
        x = _input(op[3], rng)
        out.append(_chat(f"{op[1]}\n\n{x}", op[2](x)))
    by_first = {}
    for c in comps:
        by_first.setdefault(c[0].split("+")[0], []).append(c)
    for _ in range(500):
        base = rng.choice([s for s in SEEDS if s[0] in by_first])
        x = _input(base[3], rng)
        operator = rng.choice(operators)
        if operator.direction == "breadth":
            other = rng.choice([s for s in SEEDS if s is not base])
            evolved = f"{other[1]}\n\n{_input(other[3], rng)}"
        else:
            evolved = f"{rng.choice(by_first[base[0]])[1]}\n\n{x}"
        out.append(_chat(operator.prompt(f"{base[1]}\n\n{x}"), evolved))
        out.append(_chat(NO_GAIN_PROMPT.format(parent=f"{base[1]}\n\n{x}", evolved=evolved),
                         "more"))
        if rng.random() < 0.3:
            out.append(_chat(NO_GAIN_PROMPT.format(parent=evolved, evolved=evolved), "same"))
    rng.shuffle(out)
    return out


def build(out: Path) -> None:
    (out / "data").mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / "data" / "seed_tasks.jsonl", seed_tasks())
    _write_jsonl(out / "data" / "growth_warmup.jsonl", warmup())


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else
          Path(__file__).resolve().parents[1] / "framework" / "assets")
