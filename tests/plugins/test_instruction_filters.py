"""The Self-Instruct and Evol-Instruct filters, on the real seed tasks."""

from __future__ import annotations

import json
import re

import pytest

from tempering import FilterContext
from tempering.pipeline.filtering import apply_filters
from tempering.plugin_manager import build_plugin_manager, build_registry
from tempering.recipe.schema_base import ComponentConfig
from tempering.rouge import rouge_l

REGISTRY = build_registry(build_plugin_manager(entry_points=False))


def keep(name, pool, context=None, **options):
    flt = REGISTRY.get("sample_filter", name)
    extra = {"context": context or FilterContext()} if flt.uses_context else {}
    return flt.keep(pool, **options, **extra)


@pytest.fixture(scope="module")
def seeds(shared_data):
    lines = (shared_data / "alpaca_seed_tasks.jsonl").read_text().splitlines()
    return [json.loads(line)["instruction"] for line in lines]


def entries(texts, **extra):
    return [{"text": t, "instruction": t, **extra} for t in texts]


def test_rouge_novelty_against_the_seed_pool_and_within_the_batch(seeds):
    context = FilterContext(history=entries(seeds))
    near = seeds[10].replace(".", " please.") if "." in seeds[10] else seeds[10] + " now"
    novel = "Compose a sea shanty about debugging a memory leak at midnight."
    out = keep("rouge_novelty", entries([seeds[3], near, novel, novel]), context)
    assert out[0].startswith("ROUGE-L 1.00 > 0.7 with ") and seeds[3][:20] in out[0]
    assert isinstance(out[1], str) and rouge_l(near, seeds[10]) > 0.7
    assert out[2] is True and out[3].startswith("ROUGE-L 1.00")  # its twin earlier in the pool
    # The history is indexed once and grows: what was kept joins it.
    context.history += entries([novel])
    assert keep("rouge_novelty", entries([novel]), context)[0].startswith("ROUGE-L 1.00")
    assert len(context.state[("rouge_novelty", "text", "default")]["index"]) == len(seeds) + 1


def test_rouge_novelty_on_seed_tasks_keeps_exactly_those_below_the_threshold(seeds):
    pool, kept = [], []
    out = keep("rouge_novelty", entries(seeds))
    for text, verdict in zip(seeds, out, strict=True):
        best = max((rouge_l(text, k) for k in kept), default=0.0)
        assert (verdict is True) == (best <= 0.7)
        if verdict is True:
            kept.append(text)
    assert 0 < len(seeds) - len(kept) < 5  # a few seed tasks are near copies of earlier ones
    pool = seeds[:20] + seeds[:5]
    assert keep("rouge_novelty", entries(pool))[20:] == [
        f"ROUGE-L 1.00 > 0.7 with {t[:59] + '…' if len(t) > 60 else t!r}" for t in seeds[:5]]


def test_word_length_keywords_and_first_character_on_seed_tasks(seeds):
    lengths = keep("word_length", entries(seeds))
    assert all((v is True) == (4 <= len(s.split()) <= 150) for s, v in zip(seeds, lengths,
                                                                             strict=True))
    assert keep("word_length", entries(["Name it."]))[0] == "2 words, fewer than 4"
    blocked = keep("keywords", entries(seeds))
    words = {"image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map",
             "maps", "draw", "plot", "video", "audio", "music", "flowchart", "diagram"}
    expect = [bool(words & set(re.findall(r"[a-z]+", s.lower()))) or "go to" in s.lower()
              or s.lower().startswith("write a program") for s in seeds]
    assert [v is not True for v in blocked] == expect
    assert keep("keywords", entries(["Draw a cat.", "Write a program that adds.",
                                     "Mapping is fine."])) == [
        "blocklisted word 'Draw'", "starts with 'write a program'", True]
    assert all(v is True for v in keep("starts_alnum", entries(seeds)))
    assert keep("starts_alnum", entries(["- a list item", "다음 문장", "", "3 cats"])) == [
        "starts with '-'", True, "empty", True]


def test_exact_duplicates_against_the_pool_and_the_batch(seeds):
    context = FilterContext(history=entries(seeds))
    out = keep("exact_duplicate", entries(["  " + seeds[0].upper() + " ", "New task here.",
                                           "new   task here."]), context)
    assert out == ["a duplicate of a kept sample", True, "a duplicate of an earlier candidate"]
    instances = [{"instruction": "a", "input": "1", "output": "x"},
                 {"instruction": "a", "input": "1", "output": "x"},
                 {"instruction": "b", "input": "1", "output": "x"}]
    assert keep("exact_duplicate", instances, field=["instruction", "input", "output"]) == [
        True, "a duplicate of an earlier candidate", True]


def test_conflicting_outputs_drop_every_instance_of_that_input():
    pool = [{"prompt_id": "t", "input": "2+2", "output": "4"},
            {"prompt_id": "t", "input": "2+2", "output": "5"},
            {"prompt_id": "t", "input": "3+3", "output": "6"},
            {"prompt_id": "u", "input": "2+2", "output": "5"}]
    assert keep("conflicting_outputs", pool) == ["the same input has other outputs"] * 2 + [
        True, True]


def test_evol_eliminations():
    responses = entries(["x"] * 4)
    for r, out in zip(responses, ["I'm sorry, but I cannot help with that request.", "Yes.",
                                  "The capital of France is Paris, on the Seine.",
                                  "Sorry " + "word " * 90], strict=True):
        r["output"] = out
    assert keep("refusal", responses) == ["an apology ('sorry' in 9 words)",
                                          "very short (1 words)", True, True]
    only = [{"output": o} for o in ["... it is, and the !", "the of , to", "The cat sat.", "No."]]
    assert keep("stopwords_only", only) == ["only punctuation and stop words"] * 2 + [True, True]
    copied = [{"instruction": t, "prompt": "Rewrite.\n#Original Instruction#:\nX\n#Secret Tag#"}
              for t in ["Rewrite the original instruction to be longer.", "A #secret tag# task.",
                        "Name five rivers."]]
    assert keep("copies_prompt", copied) == ["copies 'original instruction' from the evolving "
                                             "prompt",
                                             "copies '#Secret Tag#' from the evolving prompt",
                                             True]


def test_no_gain_asks_the_generator_and_counts_answers_it_cannot_read():
    asked = []

    def ask(prompts, max_new_tokens):
        asked.extend(prompts)
        return ["More.", "same", "I think so"]

    context = FilterContext(ask=ask)
    pool = [{"instruction": b, "parent": a} for a, b in
            [("Name a river.", "Name a river in Asia longer than 1,000 km."),
             ("Name a river.", "Tell me the name of a river."),
             ("Name a river.", "Name a river and its source."),
             ("Name a river.", "name a  river.")]]
    out = keep("no_gain", pool, context)
    assert out[0] is True and out[1].startswith("judged no gain") and out[2] is True
    assert out[3] == "identical to its parent" and len(asked) == 3
    assert "Instruction B:\nName a river in Asia" in asked[0]
    assert context.notes == {"no_gain: unclear answer, kept": 1}
    with pytest.raises(ValueError, match="asks the stage's generator"):
        keep("no_gain", pool, FilterContext())


def test_a_chain_records_the_first_filter_that_drops_and_its_reason(seeds):
    picks = [ComponentConfig("starts_alnum"), ComponentConfig("word_length"),
             ComponentConfig("rouge_novelty")]
    pool = entries(["- bullet task here", "Short.", seeds[0], "A genuinely new task to do."])
    verdicts = apply_filters(pool, picks, REGISTRY, "stage", FilterContext(
        history=entries(seeds)))
    assert verdicts.kept == [3]
    assert verdicts.dropped[0] == ("starts_alnum", "starts with '-'")
    assert verdicts.dropped[1] == ("word_length", "1 words, fewer than 4")
    assert verdicts.dropped[2][0] == "rouge_novelty"
    assert verdicts.counts() == {"starts_alnum": 1, "word_length": 1, "rouge_novelty": 1}
    with pytest.raises(ValueError, match="stage: filter 'word_length': the samples have no "
                                         "'output' field"):
        apply_filters(pool, [ComponentConfig("word_length", {"field": "output"})], REGISTRY,
                      "stage")


def test_the_evol_eliminations_keep_the_real_seed_tasks(shared_data):
    lines = (shared_data / "alpaca_seed_tasks.jsonl").read_text().splitlines()
    tasks = [json.loads(line) for line in lines]
    pool = [{"prompt_id": t["id"], "text": t["instruction"], "instruction": t["instruction"],
             "parent": t["instruction"], "prompt": "#Original Instruction#", "input": i["input"],
             "output": i["output"]} for t in tasks for i in t["instances"]]
    refused = keep("refusal", pool)
    for sample, verdict in zip(pool, refused, strict=True):
        words = sample["output"].split()
        sorry = any(p in sample["output"].lower() for p in ("sorry", "apologi", "as an ai",
                                                             "i cannot", "i can't", "unable"))
        assert (verdict is True) == (len(words) >= 3 and not (sorry and len(words) < 80)), \
            sample["output"]
    assert sum(v is not True for v in refused) > 0  # seed tasks with one-word answers
    assert all(v is True for v in keep("stopwords_only", pool))
    assert all(v is True for v in keep("copies_prompt", pool))
    assert all(v is True for v in keep("conflicting_outputs", pool))
    assert keep("no_gain", pool[:3], FilterContext(ask=lambda p, n: [])) == [
        "identical to its parent"] * 3
