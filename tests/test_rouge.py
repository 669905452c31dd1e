"""ROUGE-L against the rouge-score package, and NoveltyIndex against the all-pairs maximum."""

from __future__ import annotations

import json
import random

import pytest
from rouge_score import rouge_scorer

import tempering
from tempering.rouge import NoveltyIndex, lcs_length, rouge_l, rouge_tokens

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def reference_f(candidate: str, reference: str) -> float:
    return SCORER.score(reference, candidate)["rougeL"].fmeasure


@pytest.fixture(scope="module")
def instructions(shared_data):
    alpaca = json.loads((shared_data / "alpaca_5000.json").read_text())
    lines = (shared_data / "alpaca_seed_tasks.jsonl").read_text().splitlines()
    seeds = [json.loads(line) for line in lines]
    return [s["instruction"] for s in seeds] + [r["instruction"] for r in alpaca]


def test_public_api():
    assert tempering.rouge_l is rouge_l and tempering.NoveltyIndex is NoveltyIndex


def test_rouge_l_equals_rouge_score_on_real_instructions(instructions):
    rng = random.Random(0)
    pairs = [(rng.choice(instructions), rng.choice(instructions)) for _ in range(3000)]
    pairs += [(a, a) for a in instructions[:50]]
    worst = max(abs(rouge_l(a, b) - reference_f(a, b)) for a, b in pairs)
    assert worst <= 1e-9
    assert sum(rouge_l(a, b) > 0 for a, b in pairs) > 2000  # the pairs do overlap


AWKWARD = [
    ("", "anything at all"), ("...!!!", "?"), ("the the the", "the"),
    ("Caf\u00e9 na\u00efve", "cafe naive"), ("\u0130stanbul", "istanbul"),  # lower() grows
    ("\u212a is kelvin", "k is kelvin"), ("snake_case words", "snake case words"),
    ("x" * 3 + " 42 " * 70, " 42" * 65), ("a\nb\tc", "a b c"), ("\ud55c\uad6d\uc5b4 \ubb38\uc7a5", "a"),
    ("Write a poem about the sea.", "Write a short poem about the sea and the sky."),
]


@pytest.mark.parametrize("candidate, reference", AWKWARD)
def test_rouge_l_equals_rouge_score_on_awkward_text(candidate, reference):
    assert rouge_l(candidate, reference) == pytest.approx(reference_f(candidate, reference),
                                                          abs=1e-9)
    assert rouge_tokens(candidate) == SCORER._tokenizer.tokenize(candidate)


def _dp_lcs(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = (table[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1]
                           else max(table[i - 1][j], table[i][j - 1]))
    return table[-1][-1]


def test_bit_parallel_lcs_equals_the_table():
    rng = random.Random(1)
    for _ in range(500):
        a = [rng.randrange(5) for _ in range(rng.randrange(0, 90))]
        b = [rng.randrange(5) for _ in range(rng.randrange(0, 90))]
        assert lcs_length(a, b) == _dp_lcs(a, b)


def test_novelty_index_equals_the_all_pairs_maximum(instructions):
    pool, queries = instructions[:1500], instructions[1500:1700]
    index = NoveltyIndex(pool)
    for q in queries + pool[:20]:  # pool members score 1.0 against themselves
        score, nearest = index.max_rouge_l(q)
        scores = [reference_f(q, p) for p in pool]
        best = max(scores)
        assert score == pytest.approx(best, abs=1e-9)
        assert nearest == scores.index(best)  # the first of equals


def test_novelty_index_grows_and_handles_empty_cases():
    index = NoveltyIndex()
    assert index.max_rouge_l("anything") == (0.0, -1)
    assert index.add("Name three fruits.") == 0
    assert index.max_rouge_l("!!!") == (0.0, 0)
    assert index.max_rouge_l("unrelated words entirely") == (0.0, 0)
    index.add("Name three colors.")
    index.add("Name three colors.")  # equals: the first is the nearest
    score, nearest = index.max_rouge_l("name three colors")
    assert (score, nearest) == (1.0, 1)
    with pytest.raises(ValueError, match="ROUGE tokenizer 'words'"):
        NoveltyIndex(tokenizer="words")


KOREAN_A = "다음 문장을 영어로 번역하세요."
KOREAN_B = "다음 문장을 프랑스어로 번역하세요."


def test_unicode_tokenization_scores_korean():
    assert rouge_tokens(KOREAN_A) == []
    assert rouge_l(KOREAN_A, KOREAN_B) == 0.0  # default: every Korean word is dropped
    assert rouge_tokens(KOREAN_A, "unicode") == ["다음", "문장을", "영어로", "번역하세요"]
    # 3 of 4 words in common, in order: F = 2 * 3 / (4 + 4)
    assert rouge_l(KOREAN_A, KOREAN_B, "unicode") == pytest.approx(0.75)
    index = NoveltyIndex(["오늘 날씨를 설명하세요.", KOREAN_B], tokenizer="unicode")
    assert index.max_rouge_l(KOREAN_A) == (pytest.approx(0.75), 1)
    assert NoveltyIndex([KOREAN_B]).max_rouge_l(KOREAN_A) == (0.0, 0)


def test_unicode_tokenization_splits_chinese_into_characters_and_keeps_latin():
    assert rouge_tokens("翻译这句话 into English!", "unicode") == ["翻", "译", "这", "句", "话",
                                                              "into", "english"]
    assert rouge_tokens("Ｆｕｌｌ width", "unicode") == ["full", "width"]  # NFKC
    assert rouge_l("翻译这句话", "翻译这个句子", "unicode") > 0.5
