"""Built-in procedural tasks of translation, summarization and natural-language inference,
for instruction tuning over a task mixture with no dataset to download (the others are in
:mod:`tempering.plugins.tasks`, whose conventions these follow: one record from a seeded
``random.Random`` and nothing else, made-up syllable words, small numbers, short exact answers,
labels right by construction and drawn with equal odds).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from tempering import Task, hookimpl

__all__ = ["CIPHER", "FAMILIES", "SYLLABLES", "number_words", "register_tasks"]

# The same syllables and word helpers as tempering.plugins.tasks: a built-in plugin imports
# only tempering, so they are repeated here (tests check that the syllables agree).
SYLLABLES = tuple("ka lo mi ne ru ta po si ve du ba fi go he jo ze wa yu qi xo".split())
# The "Veta" language of the cipher tasks: every syllable of a word replaced by another, a fixed
# one-to-one map (a shift by 7 along the list, so no syllable stays itself).
CIPHER = dict(zip(SYLLABLES, SYLLABLES[7:] + SYLLABLES[:7], strict=True))
ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
NLI_LABELS = ("entailment", "neutral", "contradiction")
PLURALS = ("pears", "stones", "cats", "boats", "cups", "hats", "eggs", "books")
ROOMS = ("kitchen", "garden", "hall", "attic", "cellar", "library")
COMPARATIVES = (("taller", "shorter"), ("older", "younger"), ("faster", "slower"))

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


def number_words(n: int) -> str:
    """``n`` (0 to 999) in English words: ``forty-seven``, ``three hundred twelve``."""
    hundreds, rest = divmod(n, 100)
    if rest < 20:
        tail = ONES[rest]
    else:
        tail = TENS[rest // 10] + (f"-{ONES[rest % 10]}" if rest % 10 else "")
    if not hundreds:
        return tail
    return f"{ONES[hundreds]} hundred" + (f" {tail}" if rest else "")


# Translation --------------------------------------------------------------------------------


def _translation(source: str, languages: tuple[str, str], target: str) -> Record:
    return {
        "source": source,
        "source_language": languages[0],
        "target_language": languages[1],
        "target": target,
    }


def _encipher(text: str) -> str:
    return " ".join("".join(CIPHER[s] for s in syllables_of(w)) for w in text.split())


def _phrase(rng: random.Random) -> str:
    return " ".join(words(rng, rng.randint(1, 3)))


def cipher_encode(rng: random.Random) -> Record:
    """Made-up words into the Veta cipher (a fixed syllable substitution)."""
    plain = _phrase(rng)
    return _translation(plain, ("Lomi", "Veta"), _encipher(plain))


def cipher_decode(rng: random.Random) -> Record:
    """The Veta cipher (a fixed syllable substitution) back into plain made-up words."""
    plain = _phrase(rng)
    return _translation(_encipher(plain), ("Veta", "Lomi"), plain)


def _count_sentence(rng: random.Random) -> tuple[str, int, str]:
    return word(rng), rng.randint(2, 999), rng.choice(PLURALS)  # 2+: plural things


def digits_to_words(rng: random.Random) -> Record:
    """A number written in digits into English words ("47" -> "forty-seven")."""
    owner, n, things = _count_sentence(rng)
    source, target = f"{owner} has {n} {things}.", f"{owner} has {number_words(n)} {things}."
    return _translation(source, ("digits", "words"), target)


def words_to_digits(rng: random.Random) -> Record:
    """A number written in English words into digits ("forty-seven" -> "47")."""
    owner, n, things = _count_sentence(rng)
    source, target = f"{owner} has {number_words(n)} {things}.", f"{owner} has {n} {things}."
    return _translation(source, ("words", "digits"), target)


def reverse_order(rng: random.Random) -> Record:
    """Into Imol, which says the words of a sentence in reverse order."""
    sentence = words(rng, rng.randint(3, 5))
    return _translation(" ".join(sentence), ("Lomi", "Imol"), " ".join(reversed(sentence)))


def rotate_syllables(rng: random.Random) -> Record:
    """Into Loka, a pig latin that moves each word's first syllable to its end."""
    sentence = words(rng, rng.randint(1, 3))
    rotated = " ".join(w[2:] + w[:2] for w in sentence)
    return _translation(" ".join(sentence), ("Lomi", "Loka"), rotated)


# Summarization ------------------------------------------------------------------------------


def most_frequent_word(rng: random.Random) -> Record:
    """The word a short text repeats most."""
    top, *rest = words(rng, 3, syllables=2)
    count = rng.randint(3, 4)
    text = [top] * count + [w for w in rest for _ in range(rng.randint(1, count - 1))]
    rng.shuffle(text)
    return {"document": " ".join(text), "summary": top}


def merge_sentences(rng: random.Random) -> Record:
    """Sentences that differ in their object, merged into one."""
    subject, *objects = words(rng, rng.randint(3, 4))
    verb = rng.choice(("went to", "saw", "likes", "met"))
    document = " ".join(f"{subject} {verb} {o}." for o in objects)
    summary = f"{subject} {verb} {', '.join(objects[:-1])} and {objects[-1]}."
    return {"document": document, "summary": summary}


def first_words(rng: random.Random) -> Record:
    """The first word of each sentence, joined."""
    sentences = [words(rng, rng.randint(2, 3)) for _ in range(rng.randint(2, 4))]
    document = " ".join(" ".join(s) + "." for s in sentences)
    return {"document": document, "summary": " ".join(s[0] for s in sentences)}


def number_range(rng: random.Random) -> Record:
    """A list of numbers as its smallest and largest ("3 to 9")."""
    numbers = [rng.randrange(100) for _ in range(rng.randint(4, 6))]
    document = f"{word(rng)} wrote {', '.join(map(str, numbers))}."
    return {"document": document, "summary": f"{min(numbers)} to {max(numbers)}"}


def total_count(rng: random.Random) -> Record:
    """How many things several people have together."""
    things = rng.choice(PLURALS)
    counts = {owner: rng.randint(2, 20) for owner in words(rng, rng.randint(2, 3))}
    document = " ".join(f"{owner} has {n} {things}." for owner, n in counts.items())
    return {"document": document, "summary": f"{sum(counts.values())} {things} in all"}


# Natural-language inference -----------------------------------------------------------------


def _nli(premise: str, hypothesis: str, label: int) -> Record:
    return {"premise": premise, "hypothesis": hypothesis, "label": NLI_LABELS[label]}


def comparison(rng: random.Random) -> Record:
    """What "x is taller than y" says about other comparisons."""
    x, y, z = words(rng, 3)
    more, less = rng.choice(COMPARATIVES)
    label = rng.randrange(3)
    hypotheses = (
        (f"{y} is {less} than {x}.", f"{x} is not {less} than {y}."),
        (f"{z} is {more} than {y}.", f"{x} is {more} than {z}."),  # z: not in the premise
        (f"{y} is {more} than {x}.", f"{x} is {less} than {y}."),
    )
    return _nli(f"{x} is {more} than {y}.", rng.choice(hypotheses[label]), label)


def _count_claim(rng: random.Random, n: int, holds: bool) -> str:
    """A claim ``more than m`` / ``fewer than m`` / ``exactly m`` about ``n`` things that
    holds or not (every ``m`` is at least 2, so the things stay plural)."""
    claim = rng.choice(("more than", "fewer than", "exactly"))
    if claim == "more than":
        m = rng.randint(2, n - 1) if holds else rng.randint(n, n + 10)
    elif claim == "fewer than":
        m = rng.randint(n + 1, n + 10) if holds else rng.randint(max(2, n - 10), n)
    else:
        m = n if holds else rng.choice([k for k in range(max(2, n - 5), n + 6) if k != n])
    return f"{claim} {m}"


def count_claim(rng: random.Random) -> Record:
    """What "ka has 7 pears" says about claims on how many pears there are."""
    owner, other = words(rng, 2)
    things, n = rng.choice(PLURALS), rng.randint(3, 30)
    label = rng.randrange(3)
    # Neutral: a claim about someone the premise says nothing of.
    subject = other if label == 1 else owner
    holds = rng.random() < 0.5 if label == 1 else label == 0
    claim = _count_claim(rng, n, holds)
    return _nli(f"{owner} has {n} {things}.", f"{subject} has {claim} {things}.", label)


def attendance(rng: random.Random) -> Record:
    """Who came, given who came and who did not."""
    *came, absent, stranger = words(rng, rng.randint(4, 5))
    premise = f"{', '.join(came[:-1])} and {came[-1]} came, but {absent} did not."
    label, negated = rng.randrange(3), rng.random() < 0.5
    # A claim that someone came holds for a guest; its negation holds for the absent one.
    guest = rng.choice(came)
    who = (absent if negated else guest, stranger, guest if negated else absent)[label]
    verb = "did not come" if negated else "came"
    return _nli(premise, f"{who} {verb}.", label)


def location(rng: random.Random) -> Record:
    """Where people are, given that someone is in a room (one can be in one room only)."""
    person, other = words(rng, 2)
    room, elsewhere = rng.sample(ROOMS, 2)
    label = rng.randrange(3)
    hypotheses = (
        (f"{person} is not in the {elsewhere}.", f"Someone is in the {room}."),
        (f"{other} is in the {room}.", f"{other} is not in the {elsewhere}."),
        (f"{person} is in the {elsewhere}.", f"{person} is not in the {room}."),
    )
    return _nli(f"{person} is in the {room}.", rng.choice(hypotheses[label]), label)


FAMILIES: dict[str, tuple[Callable[[random.Random], Record], ...]] = {
    "translation": (
        cipher_encode,
        cipher_decode,
        digits_to_words,
        words_to_digits,
        reverse_order,
        rotate_syllables,
    ),
    "summarization": (most_frequent_word, merge_sentences, first_words, number_range, total_count),
    "nli": (comparison, count_claim, attendance, location),
}


@hookimpl
def register_tasks() -> list[Task]:
    return [
        Task(generate.__name__, family, generate, family, (generate.__doc__ or "").strip())
        for family, generates in FAMILIES.items()
        for generate in generates
    ]
