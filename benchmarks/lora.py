"""LoRA and QLoRA against full fine-tuning: memory, speed and what is saved, side by side.

One pretrained-like base (the bundled tiny Llama's architecture widened to d=512, 8 layers,
seeded random weights saved to disk) is fine-tuned three ways, each in its own fresh
subprocess (its own imports and peak memory) with the same data (the bundled task records,
ChatML, packed rows of 512 tokens), the same rows per step, the same steps and 2 torch threads:

- ``full``: every weight trains (AdamW on all of them);
- ``lora``: rank-16 adapters on every linear layer (``model.lora``), the base frozen;
- ``qlora``: the same adapters on a 4-bit NF4 base (``model.lora.load_in_4bit``).

    pip install -e ".[bench,qlora]"
    python benchmarks/lora.py [--steps 24] [--out benchmarks/results]

Reported per mode: trainable and total parameters, tokens/s from the end of step ``--warmup``
to the last step, peak RSS of the training process, the size of ``last.ckpt`` (what a resumable
run writes each time) and of what the run saves, and the held-out loss before and after.
bitsandbytes' 4-bit matmul on a CPU dequantizes every weight at every call, so QLoRA's speed
here says nothing about a GPU; its memory does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import optimizer_mib, rss_mib, tensor_mib  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODES = ("full", "lora", "qlora")
WIDE = {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 8,
        "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 64}
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": ["all-linear"]}


def _folder_mib(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def make_base(folder: Path) -> None:
    """The widened tiny Llama, seeded, saved as a pretrained model with its tokenizer."""
    from tempering.models import load_causal_lm, load_fast_tokenizer
    from tempering.recipe import ModelConfig

    cfg = ModelConfig(init="random", dtype="float32", config_overrides=WIDE)
    load_causal_lm(cfg, seed=0).save_pretrained(folder)
    load_fast_tokenizer(ModelConfig()).save_pretrained(folder)


def recipe(mode: str, base: Path, run_dir: Path, steps: int) -> dict[str, Any]:
    model: dict[str, Any] = {"name_or_path": str(base), "dtype": "float32"}
    if mode != "full":
        model["lora"] = {**LORA, "load_in_4bit": mode == "qlora"}
    return {
        "name": f"lora-bench-{mode}", "model": model, "chat_template": "chatml",
        "data": {"train": [{"path": "bundled:data/tasks_train.jsonl", "format": "messages"}],
                 "validation": [{"path": "bundled:data/tasks_eval.jsonl", "format": "messages",
                                 "max_records": 64}],
                 "max_length": 512, "packing": True, "batch_size": 2, "num_proc": 1},
        "optim": {"lr": 1e-3 if mode == "full" else 2e-3, "warmup_steps": 2},
        "train": {"seed": 0, "output_dir": str(run_dir), "checkpoint_every_n_steps": None},
        "eval": {"generate_samples": 0, "before_training": True},
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": steps,
                    "enable_progress_bar": False, "val_check_interval": steps,
                    "check_val_every_n_epoch": None},
        "wandb": {"mode": "disabled"},
    }


def child(mode: str, base: Path, steps: int, warmup: int, out: Path) -> None:
    """Train one mode in this process and write its measurements to ``out``."""
    import torch
    from lightning.pytorch.callbacks import Callback

    from tempering.recipe import load_recipe
    from tempering.train.driver import run_recipe

    torch.set_num_threads(2)

    class Clock(Callback):
        def __init__(self) -> None:
            self.tokens, self.t0, self.t1, self.train_peak, self.grads = 0, 0.0, 0.0, 0.0, 0.0

        def on_train_start(self, trainer, module) -> None:
            # restart Linux's peak-RSS counter: the training peak alone, without loading
            Path("/proc/self/clear_refs").write_text("5")

        def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
            self.grads = tensor_mib(p.grad for p in module.model.parameters()
                                    if p.grad is not None)

        def on_train_end(self, trainer, module) -> None:
            self.train_peak = rss_mib("VmHWM")
            # the tensors training keeps, as stored (a 4-bit weight: its packed bytes)
            self.weights = tensor_mib(module.model.parameters())
            self.optimizer = optimizer_mib(trainer.optimizers[0])

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            step = trainer.global_step
            if step == warmup:
                self.t0, self.tokens = time.perf_counter(), 0
            elif step > warmup:
                self.t1 = time.perf_counter()
                self.tokens += int(batch["input_ids"].numel())

    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        summary = run_recipe(load_recipe(recipe(mode, base, run_dir, steps)), callbacks=[clock])
        saved = Path(summary["final_model"])
        result = {
            "mode": mode,
            "trainable_parameters": summary["trainable_parameters"],
            "total_parameters": summary["total_parameters"],
            "tokens_per_s": clock.tokens / (clock.t1 - clock.t0),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "train_peak_rss_mib": clock.train_peak,
            "weights_mib": clock.weights, "grads_mib": clock.grads,
            "optimizer_mib": clock.optimizer,
            "last_ckpt_mib": _folder_mib(run_dir / "checkpoints" / "last.ckpt"),
            "saved_model_mib": _folder_mib(saved / "model.safetensors"),
            "saved_adapter_mib": (_folder_mib(saved / "adapter") if (saved / "adapter").exists()
                                  else None),
            "val_loss_before": summary["val_loss_before"], "val_loss": summary["val_loss"],
        }
    out.write_text(json.dumps(result), encoding="utf-8")


def _versions() -> str:
    import importlib.metadata as md

    names = ("torch", "transformers", "peft", "bitsandbytes", "lightning")
    return ", ".join(f"{n} {md.version(n)}" for n in names)


def markdown(results: list[dict[str, Any]], steps: int, warmup: int) -> str:
    by = {r["mode"]: r for r in results}
    full = by["full"]
    rows = [("trainable parameters", "trainable_parameters", "{:,}"),
            ("total parameters", "total_parameters", "{:,}"),
            ("**tokens / s**", "tokens_per_s", "{:,.0f}"),
            ("**peak RSS while training (MiB)**", "train_peak_rss_mib", "{:,.0f}"),
            ("peak RSS, whole run: loading and merging too (MiB)", "peak_rss_mib", "{:,.0f}"),
            ("- weights as stored (MiB)", "weights_mib", "{:,.1f}"),
            ("- gradients (MiB)", "grads_mib", "{:,.1f}"),
            ("- AdamW state (MiB)", "optimizer_mib", "{:,.1f}"),
            ("last.ckpt (MiB)", "last_ckpt_mib", "{:,.1f}"),
            ("saved model (MiB)", "saved_model_mib", "{:,.1f}"),
            ("saved adapters alone (MiB)", "saved_adapter_mib", "{:,.2f}"),
            ("held-out loss before", "val_loss_before", "{:.3f}"),
            ("held-out loss after", "val_loss", "{:.3f}")]
    lines = ["# LoRA and QLoRA vs full fine-tuning", "",
             f"2 CPUs ({platform.platform()}), 2 torch threads; {_versions()}. The bundled tiny "
             f"Llama widened to {WIDE['hidden_size']} x {WIDE['num_hidden_layers']} layers "
             f"({full['total_parameters']:,} parameters, float32), bundled task records, packed "
             f"rows of 512 tokens, 2 rows per step, {steps} steps, the first {warmup} not "
             f"timed. LoRA: rank {LORA['r']}, alpha {LORA['alpha']}, every linear layer; "
             "QLoRA: the same on a 4-bit NF4 base (double quantization). Each mode in its own "
             "process. `python benchmarks/lora.py`", "",
             "| metric | full | LoRA | QLoRA | LoRA / full | QLoRA / full |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for label, key, fmt in rows:
        cells = [fmt.format(by[m][key]) if by[m].get(key) is not None else "-" for m in MODES]
        ratios = []
        for m in ("lora", "qlora"):
            a, b = by[m].get(key), full.get(key)
            ratios.append(f"{a / b:.2f}x" if a is not None and b and "loss" not in key else "")
        lines.append(f"| {label} | " + " | ".join(cells + ratios) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.base, args.steps, args.warmup, args.result)
        return
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        make_base(base)
        for mode in MODES:
            result = Path(tmp) / f"{mode}.json"
            print(f"lora benchmark: {mode} ...", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, __file__, "--child", mode, "--base", str(base),
                            "--steps", str(args.steps), "--warmup", str(args.warmup),
                            "--result", str(result)], check=True, env=env,
                           stdout=subprocess.DEVNULL)
            results.append(json.loads(result.read_text()))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lora.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    table = markdown(results, args.steps, args.warmup)
    (args.out / "lora.md").write_text(table, encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
