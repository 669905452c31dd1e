"""Every benchmark with one command, and one markdown report of them all.

    pip install -e ".[bench,qlora]"
    python benchmarks/run_all.py                 # everything (about 50 minutes on 2 cores)
    python benchmarks/run_all.py --only sft lora # some of them
    python benchmarks/run_all.py --report-only   # the report from the results already there

Each benchmark runs as its own script (the same command its own table names) and writes its
JSON and markdown into ``--out``; the report, ``REPORT.md`` there, puts the tables together in
one file after a short summary, each table with the date its results were written.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# name -> (script, arguments, result files (stem), what it compares)
BENCHMARKS: dict[str, tuple[str, list[str], list[str], str]] = {
    "sft": ("sft_throughput.py", [], ["sft_throughput"],
            "SFT tokens/s, MFU, peak memory, preprocessing and time to the first step vs TRL "
            "(bundled tiny model)"),
    "sft-131k": ("sft_throughput.py", ["--rows", "8", "--hidden", "256", "--vocab", "131072",
                                       "--steps", "24", "--warmup", "4", "--repeats", "1",
                                       "--name", "sft_throughput_131k"],
                 ["sft_throughput_131k"], "the same at width 256 and a 131k vocabulary"),
    "sft-trl-defaults": ("sft_throughput.py", ["--trl-defaults", "--name",
                                               "sft_throughput_trl_defaults"],
                         ["sft_throughput_trl_defaults"],
                         "the same against TRL with its own defaults (no packing, bf16 "
                         "autocast, gradient checkpointing)"),
    "sft-d256-8k-trl-defaults": ("sft_throughput.py", ["--trl-defaults", "--rows", "8",
                                                       "--hidden", "256", "--vocab", "8192",
                                                       "--steps", "40", "--warmup", "5",
                                                       "--repeats", "1", "--name",
                                                       "sft_throughput_d256_8k_trl_defaults"],
                                 ["sft_throughput_d256_8k_trl_defaults"],
                                 "width 256 and an 8k vocabulary against TRL's defaults"),
    "sft-131k-trl-defaults": ("sft_throughput.py", ["--trl-defaults", "--rows", "8", "--hidden",
                                                    "256", "--vocab", "131072", "--steps", "24",
                                                    "--warmup", "4", "--repeats", "1", "--name",
                                                    "sft_throughput_131k_trl_defaults"],
                              ["sft_throughput_131k_trl_defaults"],
                              "width 256 and a 131k vocabulary against TRL's defaults"),
    "sft-compile": ("sft_throughput.py", ["--compile", "--steps", "200", "--repeats", "1",
                                          "--name", "sft_throughput_compile"],
                    ["sft_throughput_compile"], "the same with tempering's train.compile"),
    "lora": ("lora.py", [], ["lora"], "LoRA and QLoRA vs full fine-tuning"),
    "kd-memory": ("kd_memory.py", [], ["kd_memory"],
                  "the distillation loss's memory, chunked vs the full vocabulary"),
    "generation": ("generation.py", [], ["generation"],
                   "best-of-N sampling, shared prefix vs num_return_sequences"),
    "distillation": ("distillation.py", [], ["distillation"],
                     "distillation methods at equal steps"),
    "rouge": ("rouge_filter.py", [], ["rouge_filter"],
              "the Self-Instruct novelty filter vs all-pairs rouge-score"),
    "task-diversity": ("task_diversity.py", [], ["task_diversity"],
                       "instruction tuning on 1, 4 and 16 tasks"),
}


def run(name: str, out: Path) -> float:
    script, args, _, _ = BENCHMARKS[name]
    print(f"== {name}: python benchmarks/{script} {' '.join(args)}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, str(HERE / script), *args, "--out", str(out)], check=True)
    return time.perf_counter() - started


def _written(path: Path) -> str:
    return datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC")


def _sft_line(out: Path, stem: str) -> str | None:
    path = out / f"{stem}.json"
    if not path.exists():
        return None
    report: dict[str, Any] = json.loads(path.read_text())
    t, r, ratios = report["tempering"], report["trl"], report["ratios"]
    records = t["conversations"] + sum(t["dropped"].values())
    prep = [records / x["data_prep_s"] for x in (t, r)]
    mfu = f"MFU {t['mfu']:.2f} vs {r['mfu']:.2f}, " if "mfu" in t and "mfu" in r else ""
    return (f"- `{stem}`: supervised tokens/s {ratios['supervised_tokens_per_s']:.2f}x TRL's, "
            f"{mfu}peak RSS in training {ratios.get('peak_rss_train_mib', float('nan')):.2f}x, "
            f"preprocessing {prep[0]:,.0f} vs {prep[1]:,.0f} records/s "
            f"({prep[0] / prep[1]:.2f}x), first optimizer step done after "
            f"{t.get('first_step_s', t['setup_s']):.1f} s vs "
            f"{r.get('first_step_s', r['setup_s']):.1f} s")


def report(out: Path, timings: dict[str, float]) -> str:
    lines = ["# tempering benchmark report", "",
             "Written by `python benchmarks/run_all.py`. Each section is one benchmark's own "
             "table, with the command that produced it and when its results were written.", "",
             "## Summary", ""]
    lines += [line for stem in ("sft_throughput", "sft_throughput_131k",
                                "sft_throughput_trl_defaults", "sft_throughput_d256_8k_trl_defaults",
                                "sft_throughput_131k_trl_defaults", "sft_throughput_compile")
              if (line := _sft_line(out, stem))]
    if timings:
        lines += ["", "This run: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items())]
    for name, (script, args, stems, what) in BENCHMARKS.items():
        for stem in stems:
            table = out / f"{stem}.md"
            if not table.exists():
                lines += ["", f"## {name}: not run yet (`python benchmarks/{script}`)"]
                continue
            body = table.read_text(encoding="utf-8").strip().splitlines()
            title = body[0].lstrip("# ") if body and body[0].startswith("#") else what
            lines += ["", f"## {title}", "",
                      f"{what}; `python benchmarks/{script} {' '.join(args)}`".rstrip() +
                      f"; results written {_written(table)}.", "",
                      *[line for line in body[1:] if not line.startswith("# ")]]
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=None)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    timings = {}
    if not args.report_only:
        for name in args.only or list(BENCHMARKS):
            timings[name] = run(name, args.out)
    text = report(args.out, timings)
    (args.out / "REPORT.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
