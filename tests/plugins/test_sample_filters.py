"""The built-in sample filters against hand-worked pools."""

from __future__ import annotations

import pytest

from tempering.plugins import sample_filters as f


def _pool(*rows):
    return [{"prompt_id": p, "text": t, "score": s, "num_tokens": n, "finish_reason": r}
            for p, t, s, n, r in rows]


POOL = _pool(("a", "x one", 0.2, 3, "stop"), ("a", "x two", 0.9, 3, "stop"),
             ("a", "x three", 0.9, 30, "length"), ("b", "y", 0.1, 1, "stop"),
             ("b", "y", 0.1, 1, "stop"), ("c", "z", 0.5, 2, "stop"))


def test_best_of_n_keeps_the_first_best_of_each_prompt():
    assert f.best_of_n(POOL) == [False, True, False, True, False, True]


def test_top_k_per_prompt():
    assert f.top_k_per_prompt(POOL, k=2) == [False, True, True, True, True, True]
    with pytest.raises(ValueError, match="k must be >= 1"):
        f.top_k_per_prompt(POOL, k=0)


def test_threshold():
    assert f.threshold(POOL, min_score=0.5) == [False, True, True, False, False, True]
    assert f.threshold(POOL, min_score=0.0, max_score=0.2) == [True, False, False, True, True,
                                                                False]


def test_margin_is_over_the_prompts_mean():
    # prompt a: mean 2/3; b and c: every sample equals the mean, so none is kept
    assert f.margin(POOL) == [False, True, True, False, False, False]
    assert f.margin(POOL, margin=0.3) == [False, False, False, False, False, False]


def test_dedup_exact_and_near_within_a_prompt_or_the_pool():
    pool = _pool(("a", "the cat sat on the mat", 0.1, 6, "stop"),
                 ("a", "the cat sat on the mat today", 0.8, 7, "stop"),
                 ("a", "something else entirely here", 0.3, 4, "stop"),
                 ("b", "the  cat sat on the mat", 0.5, 6, "stop"))
    # near-duplicates: the better-scoring copy survives
    assert f.dedup(pool, similarity=0.6) == [False, True, True, True]
    assert f.dedup(pool, similarity=None) == [True, True, True, True]
    assert f.dedup(pool, similarity=None, scope="pool") == [False, True, True, True]
    assert f.dedup(POOL, similarity=None) == [True, True, True, True, False, True]


def test_length_drops_unfinished_and_out_of_range():
    assert f.length(POOL) == [True, True, False, True, True, True]
    assert f.length(POOL, min_tokens=2, max_tokens=3) == [True, True, False, False, False, True]
    assert f.length(POOL, drop_unfinished=False)[2] is True


def test_filters_that_rank_need_scores():
    unscored = [{**s, "score": None} for s in POOL]
    with pytest.raises(ValueError, match="put a score stage before this filter"):
        f.best_of_n(unscored)
    assert f.dedup(unscored, similarity=None) == [True, True, True, True, False, True]
