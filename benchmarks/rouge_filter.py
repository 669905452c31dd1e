"""The Self-Instruct novelty filter: tempering's NoveltyIndex vs the all-pairs rouge-score loop.

    python benchmarks/rouge_filter.py [--candidates 1500] [--large-pool 30000] [--out benchmarks/results]

The filter as Self-Instruct runs it: a pool starts as the 175 seed instructions
(``alpaca_seed_tasks.jsonl``); candidates are compared with every pool instruction: the
instructions of ``alpaca_5000.json`` in order, each second one followed by a near copy (one word
dropped, as a generator repeating itself writes), since Alpaca's instructions already passed
this filter once, and one whose highest ROUGE-L F-measure is at most 0.7
joins the pool. The peer is the loop the Self-Instruct and Alpaca code runs: ``rouge-score``'s
``RougeScorer(["rougeL"]).score`` against every pool text, one process. tempering runs
``NoveltyIndex.max_rouge_l`` then ``add``. Both make every decision, and the benchmark checks they
are the same (kept set, scores within 1e-9). A second row asks single queries against a pool of
``--large-pool`` texts (alpaca instructions, inputs and sentences of outputs), where the peer is
timed on a few queries only.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"  # read in place, never copied into the repository
THRESHOLD = 0.7


def _instructions() -> tuple[list[str], list[str]]:
    seeds = [json.loads(line)["instruction"]
             for line in (DATA / "alpaca_seed_tasks.jsonl").read_text().splitlines()]
    alpaca = json.loads((DATA / "alpaca_5000.json").read_text())
    return seeds, [r["instruction"] for r in alpaca]


def _stream(alpaca: list[str]) -> list[str]:
    import random

    rng = random.Random(0)
    out: list[str] = []
    for i, text in enumerate(alpaca):
        out.append(text)
        words = text.split()
        if i % 2 and len(words) > 3:
            del words[rng.randrange(len(words))]
            out.append(" ".join(words))
    return out


def _peer(seeds: list[str], candidates: list[str]) -> tuple[float, list[float], list[int]]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pool, scores, kept = list(seeds), [], []
    started = time.perf_counter()
    for i, text in enumerate(candidates):
        best = max(scorer.score(p, text)["rougeL"].fmeasure for p in pool)
        scores.append(best)
        if best <= THRESHOLD:
            pool.append(text)
            kept.append(i)
    return time.perf_counter() - started, scores, kept


def _ours(seeds: list[str], candidates: list[str]) -> tuple[float, list[float], list[int]]:
    from tempering import NoveltyIndex

    started = time.perf_counter()
    index = NoveltyIndex(seeds)
    scores, kept = [], []
    for i, text in enumerate(candidates):
        best, _ = index.max_rouge_l(text)
        scores.append(best)
        if best <= THRESHOLD:
            index.add(text)
            kept.append(i)
    return time.perf_counter() - started, scores, kept


def _large_pool(size: int, queries: list[str], peer_queries: int) -> dict[str, Any]:
    from rouge_score import rouge_scorer

    from tempering import NoveltyIndex

    texts: list[str] = []
    for r in json.loads((DATA / "alpaca_5000.json").read_text()):
        texts += [r["instruction"], r["input"]] + re.split(r"(?<=[.!?])\s+", r["output"])
    texts = [t for t in texts if len(t.split()) >= 3][:size]
    built = time.perf_counter()
    index = NoveltyIndex(texts)
    build_s = time.perf_counter() - built
    started = time.perf_counter()
    ours = [index.max_rouge_l(q)[0] for q in queries]
    ours_s = time.perf_counter() - started
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    started = time.perf_counter()
    peer = [max(scorer.score(t, q)["rougeL"].fmeasure for t in texts)
            for q in queries[:peer_queries]]
    peer_s = time.perf_counter() - started
    assert all(abs(a - b) <= 1e-9 for a, b in zip(ours, peer, strict=False)), "scores differ"
    return {"pool": len(texts), "index_build_s": build_s, "queries": len(queries),
            "ours_per_s": len(queries) / ours_s, "peer_queries": peer_queries,
            "peer_per_s": peer_queries / peer_s, "speedup": (len(queries) / ours_s)
            / (peer_queries / peer_s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=1500,
                        help="alpaca instructions run through both filters")
    parser.add_argument("--large-pool", type=int, default=30000)
    parser.add_argument("--peer-queries", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    seeds, alpaca = _instructions()
    stream = _stream(alpaca)
    candidates = stream[:args.candidates]
    peer_s, peer_scores, peer_kept = _peer(seeds, candidates)
    ours_s, our_scores, our_kept = _ours(seeds, candidates)
    assert our_kept == peer_kept, "the two filters kept different candidates"
    worst = max(abs(a - b) for a, b in zip(our_scores, peer_scores, strict=True))
    assert worst <= 1e-9, f"scores differ by {worst}"
    full_s, _, full_kept = _ours(seeds, stream)
    large = _large_pool(args.large_pool, alpaca[-200:], args.peer_queries)
    result = {
        "machine": {"python": platform.python_version(), "processor": platform.processor(),
                    "platform": platform.platform()},
        "threshold": THRESHOLD, "seeds": len(seeds),
        "growing_pool": {"candidates": len(candidates), "kept": len(our_kept),
                         "final_pool": len(seeds) + len(our_kept), "max_score_diff": worst,
                         "peer_s": peer_s, "ours_s": ours_s,
                         "peer_per_s": len(candidates) / peer_s,
                         "ours_per_s": len(candidates) / ours_s, "speedup": peer_s / ours_s},
        "all_alpaca": {"candidates": len(stream), "kept": len(full_kept), "ours_s": full_s,
                       "ours_per_s": len(stream) / full_s},
        "large_pool": large,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rouge_filter.json").write_text(json.dumps(result, indent=2) + "\n")
    g, a = result["growing_pool"], result["all_alpaca"]
    lines = [
        "# ROUGE-L novelty filter: tempering NoveltyIndex vs all-pairs rouge-score",
        "",
        "`python benchmarks/rouge_filter.py` (one run, one process each; same decisions "
        f"checked: {g['kept']} of {g['candidates']} kept by both, scores within "
        f"{g['max_score_diff']:.1e}).",
        "",
        "| setting | rouge-score all pairs | tempering | speedup |",
        "|---|---|---|---|",
        f"| growing pool: {len(seeds)} seeds, the first {g['candidates']} candidates "
        f"({g['kept']} kept, pool ends at {g['final_pool']}) | {g['peer_per_s']:.1f} candidates/s | "
        f"{g['ours_per_s']:.0f} candidates/s | {g['speedup']:.0f}x |",
        f"| growing pool: all {a['candidates']} candidates ({a['kept']} kept) | not run "
        f"| {a['ours_per_s']:.0f} candidates/s | - |",
        f"| fixed pool of {large['pool']} texts ({large['peer_queries']} queries for the peer, "
        f"{large['queries']} for tempering; index built in {large['index_build_s']:.1f} s) | "
        f"{large['peer_per_s']:.2f} queries/s | {large['ours_per_s']:.0f} queries/s | "
        f"{large['speedup']:.0f}x |",
        "",
    ]
    (args.out / "rouge_filter.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
