"""Sampling throughput: N completions per prompt, shared-prefix vs ``num_return_sequences``.

    python benchmarks/generation.py [--n 8] [--new-tokens 32] [--out benchmarks/results]

The same model, prompts and sampling settings run through tempering's transformers backend
(``HFGenerator``: each prompt prefilled once, its KV cache repeated for the N continuations) and
through ``model.generate(num_return_sequences=N)`` (every copy of the prompt prefilled), one
after the other in the same process, for prompts of about 64 and 512 tokens. New tokens per
second counts the tokens generated (no stopping: every completion runs to ``--new-tokens``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"  # read in place, never copied into the repository
MODEL_DIR = REPO / "framework" / "assets" / "tiny-llama"


def _setup() -> tuple[Any, Any, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tempering.chat.encoding import ConversationEncoder
    from tempering.plugin_manager import build_plugin_manager, build_registry

    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(MODEL_DIR)).float().eval()
    registry = build_registry(build_plugin_manager(entry_points=False))
    return model, tok, ConversationEncoder(tok, chat_template="chatml", registry=registry)


def _prompts(tok: Any, encoder: Any, tokens: int, count: int) -> list[list[dict[str, str]]]:
    """``count`` user turns cut from alpaca instructions so each renders to about ``tokens``."""
    records = json.loads((DATA / "alpaca_5000.json").read_text())
    text = " ".join(r["instruction"] + " " + r["output"] for r in records[:60])
    ids = tok(text, add_special_tokens=False)["input_ids"]
    overhead = len(tok(encoder.render([{"role": "user", "content": ""}],
                                      add_generation_prompt=True))["input_ids"])
    return [[{"role": "user", "content": tok.decode(ids[i * tokens:(i + 1) * tokens - overhead])}]
            for i in range(count)]


def _baseline(model: Any, tok: Any, encoder: Any, prompts: list[Any], n: int,
              new_tokens: int) -> tuple[float, int]:
    rows = [tok(encoder.render(p, add_generation_prompt=True),
                add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(map(len, rows))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = (ids != tok.pad_token_id).long()
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0,
                             top_k=0, num_return_sequences=n, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, eos_token_id=None,
                             pad_token_id=tok.pad_token_id)
    return time.perf_counter() - started, int(out[:, width:].numel())


def _ours(model: Any, tok: Any, encoder: Any, prompts: list[Any], n: int,
          new_tokens: int) -> tuple[float, int]:
    from tempering.generate import GenerationParams, HFGenerator

    gen = HFGenerator(model, tok, encoder, stop_ids=[], batch_size=len(prompts), progress=None)
    started = time.perf_counter()
    out = gen.generate(prompts, GenerationParams(n=n, max_new_tokens=new_tokens,
                                                 temperature=1.0, seed=0))
    return time.perf_counter() - started, sum(c.num_tokens for cs in out for c in cs)


def measure(a: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(a.threads)
    model, tok, encoder = _setup()
    results = []
    for length in (64, 512):
        prompts = _prompts(tok, encoder, length, a.prompts)
        runs: dict[str, list[float]] = {"shared_prefix": [], "num_return_sequences": []}
        for _ in range(a.repeats):  # alternate, keep each side's fastest (noise only slows)
            for name, fn in (("num_return_sequences", _baseline), ("shared_prefix", _ours)):
                seconds, new = fn(model, tok, encoder, prompts, a.n, a.new_tokens)
                runs[name].append(new / seconds)
        best = {k: max(v) for k, v in runs.items()}
        results.append({"prompt_tokens": length, "runs": runs, **best,
                        "ratio": best["shared_prefix"] / best["num_return_sequences"]})
    return {"settings": vars(a) | {"out": str(a.out)}, "machine": machine(), "results": results}


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    return {"platform": platform.platform(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            **{p: version(p) for p in ("torch", "transformers", "tempering")}}


def markdown(report: dict[str, Any]) -> str:
    s, m = report["settings"], report["machine"]
    lines = [f"# Sampling throughput: {s['n']} completions per prompt, shared prefix vs "
             "num_return_sequences", "",
             f"{s['prompts']} prompts per batch, {s['new_tokens']} new tokens each, bundled tiny "
             f"Llama (float32), {s['threads']} torch threads, {m['cpu_count']} CPUs; torch "
             f"{m['torch']}, transformers {m['transformers']}. Best of {s['repeats']} runs.", "",
             "| prompt tokens | `generate(num_return_sequences)` new tok/s | tempering shared "
             "prefix new tok/s | ratio |", "| --- | --- | --- | --- |"]
    for r in report["results"]:
        lines.append(f"| ~{r['prompt_tokens']} | {r['num_return_sequences']:,.0f} | "
                     f"{r['shared_prefix']:,.0f} | {r['ratio']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    a = p.parse_args()
    report = measure(a)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "generation.json").write_text(json.dumps(report, indent=2) + "\n")
    (a.out / "generation.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
