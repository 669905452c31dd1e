"""Filters for growing instruction data: Self-Instruct's (novelty by ROUGE-L against the whole
pool, length in words, a keyword blocklist, a first character that is a letter or digit, exact
duplicates, conflicting instances) and Evol-Instruct's eliminations (no gain over the parent,
an apology or a very short response, a response of stop words only, words copied from the
evolving prompt). Each returns, per sample, ``True`` or the reason it is dropped."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from tempering import FilterContext, SampleFilter, hookimpl

__all__ = ["register_sample_filters"]

Pool = Sequence[dict[str, Any]]

# Tasks a text-only model cannot do (Self-Instruct's list), matched as whole words.
BLOCKLIST = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map",
             "maps", "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram")
APOLOGIES = ("sorry", "i apologize", "i apologise", "as an ai", "i cannot", "i can't",
             "i am unable", "i'm unable")
# English function words; not "no", "not" or "nor", which are answers ("No.") on their own.
STOPWORDS = frozenset("""a about above after again against all am an and any are as at be because
been before being below between both but by can could did do does doing down during each few for
from further had has have having he her here hers herself him himself his how i if in into is it
its itself just me more most my myself now of off on once only or other our ours
ourselves out over own same she should so some such than that the their theirs them themselves
then there these they this those through to too under until up very was we were what when where
which while who whom why will with would you your yours yourself yourselves""".split())
# The words of the built-in operators' prompts an evolved instruction should not repeat.
PROMPT_WORDS = ("original instruction", "new instruction", "rewritten instruction")


def _text(sample: dict[str, Any], field: str) -> str:
    value = sample.get(field)
    if value is None:
        raise KeyError(f"the samples have no {field!r} field")
    return str(value)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def word_length(pool: Pool, min_words: int = 4, max_words: int | None = 150,
                field: str = "text") -> list[Any]:
    """``min_words`` to ``max_words`` words (split on whitespace)."""
    out: list[Any] = []
    for s in pool:
        n = len(_text(s, field).split())
        if n < min_words:
            out.append(f"{n} words, fewer than {min_words}")
        elif max_words is not None and n > max_words:
            out.append(f"{n} words, more than {max_words}")
        else:
            out.append(True)
    return out


def keywords(pool: Pool, blocklist: Sequence[str] = BLOCKLIST,
             prefixes: Sequence[str] = ("write a program",), field: str = "text") -> list[Any]:
    """No blocklisted word or phrase (whole words, any case), and no blocklisted opening."""
    pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in blocklist) + r")\b",
                         re.IGNORECASE) if blocklist else None
    out: list[Any] = []
    for s in pool:
        text = _text(s, field)
        hit = pattern.search(text) if pattern else None
        start = next((p for p in prefixes if text.lower().lstrip().startswith(p.lower())), None)
        out.append(f"blocklisted word {hit.group(0)!r}" if hit else
                   f"starts with {start!r}" if start else True)
    return out


def starts_alnum(pool: Pool, field: str = "text") -> list[Any]:
    """The first character is a letter or a digit (of any script)."""
    out: list[Any] = []
    for s in pool:
        text = _text(s, field).lstrip()
        out.append(True if text and text[0].isalnum() else
                   f"starts with {text[:1]!r}" if text else "empty")
    return out


def _key(sample: dict[str, Any], fields: Sequence[str]) -> tuple[str, ...]:
    return tuple(" ".join(_text(sample, f).lower().split()) for f in fields)


def exact_duplicate(pool: Pool, field: str | Sequence[str] = "text", *,
                    context: FilterContext) -> list[Any]:
    """Not the same text (case and whitespace aside) as a sample kept before or an earlier
    one of the pool; ``field`` may be a list (an instance: ``[instruction, input, output]``)."""
    fields = [field] if isinstance(field, str) else list(field)
    state = context.state.setdefault(("exact_duplicate", tuple(fields)), {"seen": set(), "n": 0})
    for s in context.history[state["n"]:]:
        if all(f in s for f in fields):
            state["seen"].add(_key(s, fields))
    state["n"] = len(context.history)
    batch: set[tuple[str, ...]] = set()
    out: list[Any] = []
    for s in pool:
        key = _key(s, fields)
        out.append("a duplicate of a kept sample" if key in state["seen"] else
                   "a duplicate of an earlier candidate" if key in batch else True)
        batch.add(key)
    return out


def rouge_novelty(pool: Pool, threshold: float = 0.7, field: str = "text",
                  tokenizer: str = "default", *, context: FilterContext) -> list[Any]:
    """ROUGE-L F-measure at most ``threshold`` against every sample kept before and every
    earlier one of the pool that this filter kept (``tokenizer: unicode`` for text other than
    English)."""
    from tempering import NoveltyIndex

    state = context.state.setdefault(("rouge_novelty", field, tokenizer),
                                     {"index": NoveltyIndex(tokenizer=tokenizer), "n": 0})
    index = state["index"]
    for s in context.history[state["n"]:]:
        index.add(_text(s, field))
    state["n"] = len(context.history)
    batch = NoveltyIndex(tokenizer=tokenizer)
    out: list[Any] = []
    for s in pool:
        text = _text(s, field)
        (score, near), (b_score, b_near) = index.max_rouge_l(text), batch.max_rouge_l(text)
        if max(score, b_score) > threshold:
            nearest = index.texts[near] if score >= b_score else batch.texts[b_near]
            best = max(score, b_score)
            shown = f"{best:.2f}" if round(best, 2) != threshold else repr(best)
            out.append(f"ROUGE-L {shown} > {threshold} with {_short(nearest)!r}")
        else:
            out.append(True)
            batch.add(text)
    return out


def conflicting_outputs(pool: Pool, group: str = "prompt_id", key: str = "input",
                        value: str = "output") -> list[Any]:
    """Instances of a task whose input appears with more than one output are all dropped."""
    outputs: dict[tuple[str, str], set[str]] = {}
    for s in pool:
        outputs.setdefault((_text(s, group), _text(s, key).strip()), set()).add(
            _text(s, value).strip())
    return [True if len(outputs[(_text(s, group), _text(s, key).strip())]) == 1 else
            "the same input has other outputs" for s in pool]


NO_GAIN_PROMPT = (
    "Instruction A:\n{parent}\n\nInstruction B:\n{evolved}\n\n"
    "Does instruction B ask for more than instruction A (new constraints, more steps, more "
    "depth, or another topic), or is it the same request in other words? Answer \"more\" or "
    "\"same\".")


def _judgement(answer: str) -> str | None:
    words = re.findall(r"[a-z]+", answer.lower())
    first = next((w for w in words if w in ("more", "same", "yes", "no")), None)
    return {"yes": "more", "no": "same"}.get(first or "", first)


def no_gain(pool: Pool, prompt: str = NO_GAIN_PROMPT, max_new_tokens: int = 8, *,
            context: FilterContext) -> list[Any]:
    """The evolved instruction asks for more than its parent: identical text is dropped, and
    the stage's generator judges the rest (an answer it cannot read keeps the sample and is
    counted in the summary's ``filter_notes``)."""
    if context.ask is None:
        raise ValueError("no_gain asks the stage's generator; use it in an evolve stage")
    ask = [i for i, s in enumerate(pool) if _key(s, ["instruction"]) != _key(s, ["parent"])]
    answers = context.ask([prompt.format(parent=pool[i]["parent"],
                                         evolved=pool[i]["instruction"]) for i in ask],
                          max_new_tokens) if ask else []
    out: list[Any] = ["identical to its parent"] * len(pool)
    for i, answer in zip(ask, answers, strict=True):
        verdict = _judgement(answer)
        if verdict is None:
            context.notes["no_gain: unclear answer, kept"] += 1
        out[i] = f"judged no gain over its parent ({_short(answer.strip(), 30)!r})" \
            if verdict == "same" else True
    return out


def refusal(pool: Pool, phrases: Sequence[str] = APOLOGIES, max_words: int = 80,
            min_words: int = 3, field: str = "output") -> list[Any]:
    """Not an apology (one of ``phrases`` in fewer than ``max_words`` words) and not very
    short (fewer than ``min_words`` words)."""
    out: list[Any] = []
    for s in pool:
        text = _text(s, field)
        n = len(text.split())
        hit = next((p for p in phrases if p in text.lower()), None)
        out.append(f"an apology ({hit!r} in {n} words)" if hit and n < max_words else
                   f"very short ({n} words)" if n < min_words else True)
    return out


def stopwords_only(pool: Pool, field: str = "output",
                   stopwords: Sequence[str] | None = None) -> list[Any]:
    """Has a word that is not a stop word (so not only punctuation and stop words)."""
    stop = STOPWORDS if stopwords is None else frozenset(w.lower() for w in stopwords)
    return [True if any(w not in stop for w in re.findall(r"[^\W_]+", _text(s, field).lower()))
            else "only punctuation and stop words" for s in pool]


def copies_prompt(pool: Pool, phrases: Sequence[str] = PROMPT_WORDS,
                  field: str = "instruction") -> list[Any]:
    """The evolved text copies none of ``phrases`` nor a ``#Marker#`` of the evolving prompt
    (the sample's ``prompt``)."""
    out: list[Any] = []
    for s in pool:
        text = _text(s, field).lower()
        markers = re.findall(r"#[^#\n]{1,40}#", str(s.get("prompt") or ""))
        hit = next((p for p in [*phrases, *markers] if p.lower() in text), None)
        out.append(f"copies {hit!r} from the evolving prompt" if hit else True)
    return out


@hookimpl
def register_sample_filters() -> list[SampleFilter]:
    return [
        SampleFilter("rouge_novelty", rouge_novelty, "ROUGE-L at most a threshold against the "
                     "whole growing pool", uses_context=True),
        SampleFilter("word_length", word_length, "a length range in words"),
        SampleFilter("keywords", keywords, "no blocklisted word (images, files, ...)"),
        SampleFilter("starts_alnum", starts_alnum, "starts with a letter or a digit"),
        SampleFilter("exact_duplicate", exact_duplicate, "no exact duplicate of a kept sample",
                     uses_context=True),
        SampleFilter("conflicting_outputs", conflicting_outputs,
                     "no input of a task with two different outputs"),
        SampleFilter("no_gain", no_gain, "the evolved instruction asks for more than its parent "
                     "(judged by the generator)", uses_context=True),
        SampleFilter("refusal", refusal, "the response is no apology and not very short"),
        SampleFilter("stopwords_only", stopwords_only, "the response has a word that is not a "
                     "stop word"),
        SampleFilter("copies_prompt", copies_prompt, "the evolved text copies nothing from the "
                     "evolving prompt"),
    ]
