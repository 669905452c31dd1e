"""Built-in procedural tasks of classification, extraction and question answering, for
instruction tuning over a task mixture with no dataset to download (translation, summarization
and inference tasks are in :mod:`tempering.plugins.tasks_language`).

Each task is a function that draws one record from a seeded ``random.Random`` (and from nothing
else, so a seed gives the same records in every process); its name is the task's name and its
docstring the task's description. The records suit a tiny model with a small vocabulary: made-up
words of two or three syllables (``kalomi``), small numbers and a little English, short inputs
and short exact answers. Input spaces are large (random words, numbers, lists), so held-out
records are rarely ones trained on. Labels are right by construction and their classes are drawn
with equal odds.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from tempering import Task, hookimpl

__all__ = ["FAMILIES", "SYLLABLES", "register_tasks", "syllables_of", "word", "words"]

# The syllables of the tiny test tokenizer's made-up words (each a consonant and a vowel).
SYLLABLES = tuple("ka lo mi ne ru ta po si ve du ba fi go he jo ze wa yu qi xo".split())
POSITIVE = ("great", "good", "lovely", "tasty", "nice", "fun", "warm", "sweet")
NEGATIVE = ("bad", "awful", "cold", "dull", "boring", "poor", "sad", "noisy")
THINGS = ("soup", "room", "film", "bus", "song", "bread", "show", "game", "tea", "park")
COLORS = ("red", "blue", "green", "black", "white", "pink", "gray", "brown")

Record = dict[str, Any]


def word(rng: random.Random, syllables: int | None = None) -> str:
    """A made-up word of ``syllables`` syllables (default: 2 or 3)."""
    count = syllables or rng.choice((2, 3))
    return "".join(rng.choice(SYLLABLES) for _ in range(count))


def words(rng: random.Random, count: int, syllables: int | None = None) -> list[str]:
    """``count`` distinct made-up words."""
    found: list[str] = []
    while len(found) < count:
        candidate = word(rng, syllables)
        if candidate not in found:
            found.append(candidate)
    return found


def syllables_of(text: str) -> list[str]:
    """A made-up word's syllables (each is a consonant and a vowel)."""
    return [text[i : i + 2] for i in range(0, len(text), 2)]


def _choice(text: str, question: str, options: list[str], index: int) -> Record:
    return {"text": text, "question": question, "options": options, "label": options[index]}


def _yes_no(text: str, question: str, yes: bool) -> Record:
    return _choice(text, question, ["yes", "no"], 0 if yes else 1)


# Classification -----------------------------------------------------------------------------


def parity(rng: random.Random) -> Record:
    """Whether a number is even or odd."""
    n = rng.randrange(100000)
    return _choice(str(n), "Is the number even or odd?", ["even", "odd"], n % 2)


def sorted_list(rng: random.Random) -> Record:
    """Whether a list of numbers is sorted from smallest to largest."""
    numbers = rng.sample(range(100), rng.randint(3, 5))
    ordered = rng.random() < 0.5
    if ordered:
        numbers.sort()
    elif numbers == sorted(numbers):
        numbers.reverse()  # distinct numbers: reversed, they are no longer ascending
    text = ", ".join(map(str, numbers))
    return _yes_no(text, "Is the list sorted from smallest to largest?", ordered)


def larger_number(rng: random.Random) -> Record:
    """Which of two numbers is larger."""
    a, b = rng.sample(range(1000), 2)
    return _choice(f"{a} and {b}", "Which number is larger?", [str(a), str(b)], int(b > a))


def has_syllable(rng: random.Random) -> Record:
    """Whether a word contains a given syllable."""
    text = word(rng, 3)
    parts = syllables_of(text)
    present = rng.random() < 0.5
    absent = [s for s in SYLLABLES if s not in parts]
    syllable = rng.choice(parts) if present else rng.choice(absent)
    return _yes_no(text, f'Does the word contain the syllable "{syllable}"?', present)


def sentiment(rng: random.Random) -> Record:
    """Whether a short review is positive or negative."""
    positive = rng.random() < 0.5
    adjective = rng.choice(POSITIVE if positive else NEGATIVE)
    very = rng.choice(("", "very ", "so "))
    text = f"{word(rng)} said the {rng.choice(THINGS)} was {very}{adjective}."
    question = "Is the review positive or negative?"
    return _choice(text, question, ["positive", "negative"], 0 if positive else 1)


def rhyme(rng: random.Random) -> Record:
    """Whether two words rhyme (end in the same syllable)."""
    first = word(rng)
    rhymes = rng.random() < 0.5
    endings = [first[-2:]] if rhymes else [s for s in SYLLABLES if s != first[-2:]]
    second = first
    while second == first:
        second = word(rng, rng.choice((1, 2))) + rng.choice(endings)
    return _yes_no(f"{first}, {second}", "Do the two words rhyme?", rhymes)


# Extraction ---------------------------------------------------------------------------------


def number_in_sentence(rng: random.Random) -> Record:
    """The number a sentence gives."""
    frame = rng.choice(
        ("{a} lives in room {n}.", "{a} bought {n} pears.", "The bus to {b} leaves at {n}.")
    )
    n = str(rng.randint(2, 999))
    return {
        "text": frame.format(a=word(rng), b=word(rng), n=n),
        "target": "the number",
        "answer": n,
    }


def quoted_word(rng: random.Random) -> Record:
    """The word a sentence quotes."""
    a, b, said = words(rng, 3)
    frame = rng.choice(('{a} said "{w}" to {b}.', '{a} and {b} shouted "{w}".'))
    return {"text": frame.format(a=a, b=b, w=said), "target": "the quoted word", "answer": said}


def key_value(rng: random.Random) -> Record:
    """The value of one key of "ka=3; lo=7"."""
    keys = rng.sample(SYLLABLES, rng.randint(3, 4))
    values = [str(rng.randrange(100)) for _ in keys]
    i = rng.randrange(len(keys))
    text = "; ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True))
    return {"text": text, "target": f"the value of {keys[i]}", "answer": values[i]}


def doctor_name(rng: random.Random) -> Record:
    """The name of the doctor in a sentence."""
    patient, doctor, town = words(rng, 3)
    frame = rng.choice(("{p} saw Dr. {d} in {t}.", "In {t}, Dr. {d} helped {p}."))
    text = frame.format(p=patient, d=doctor, t=town)
    return {"text": text, "target": "the name of the doctor", "answer": doctor}


def longest_word(rng: random.Random) -> Record:
    """The one three-syllable word among two-syllable ones."""
    others = words(rng, rng.randint(2, 4), syllables=2)
    longest = word(rng, 3)
    others.insert(rng.randint(0, len(others)), longest)
    return {"text": " ".join(others), "target": "the longest word", "answer": longest}


# Question answering -------------------------------------------------------------------------


def color_fact(rng: random.Random) -> Record:
    """A color looked up in a few stated facts."""
    names = words(rng, rng.randint(2, 3))
    colors = rng.sample(COLORS, len(names))
    i = rng.randrange(len(names))
    context = " ".join(f"{n} is {c}." for n, c in zip(names, colors, strict=True))
    return {"context": context, "question": f"What color is {names[i]}?", "answer": colors[i]}


def addition(rng: random.Random) -> Record:
    """The sum of two numbers."""
    a, b = rng.randrange(1000), rng.randrange(100)
    return {"question": f"What is {a} + {b}?", "answer": str(a + b)}


def subtraction(rng: random.Random) -> Record:
    """The difference of two numbers (never below zero)."""
    a = rng.randrange(1000)
    b = rng.randint(0, min(a, 99))
    return {"question": f"What is {a} - {b}?", "answer": str(a - b)}


def word_count(rng: random.Random) -> Record:
    """How many words a short text has."""
    count = rng.randint(2, 8)
    text = " ".join(words(rng, count))
    return {"context": text, "question": "How many words are in the text?", "answer": str(count)}


def word_before(rng: random.Random) -> Record:
    """The word that comes right before another in a list."""
    items = words(rng, rng.randint(4, 6))
    i = rng.randrange(1, len(items))
    question = f"Which word comes right before {items[i]}?"
    return {"context": ", ".join(items), "question": question, "answer": items[i - 1]}


FAMILIES: dict[str, tuple[Callable[[random.Random], Record], ...]] = {
    "classification": (parity, sorted_list, larger_number, has_syllable, sentiment, rhyme),
    "extraction": (number_in_sentence, quoted_word, key_value, doctor_name, longest_word),
    "qa": (color_fact, addition, subtraction, word_count, word_before),
}


@hookimpl
def register_tasks() -> list[Task]:
    return [
        Task(generate.__name__, family, generate, family, (generate.__doc__ or "").strip())
        for family, generates in FAMILIES.items()
        for generate in generates
    ]
