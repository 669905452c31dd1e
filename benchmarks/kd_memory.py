"""Peak memory and step time of a distillation loss: tempering's chunked path vs the full-vocabulary
computation.

    python benchmarks/kd_memory.py [--vocab 32768 131072] [--positions 4096 8192]
                                   [--objective jsd] [--out benchmarks/results]

One forward and backward of the loss head only: student hidden states ``[n, d]`` (with
gradient) and a frozen teacher's ``[n, d_t]`` at ``n`` supervised positions, each model's LM
head ``[v, d]``, and the generalized JSD (beta 0.5) between the two distributions.

- **tempering**: ``tempering.train.losses.chunked_per_token`` with the built-in objective, as
  training runs it: positions in chunks sized by the default byte budget
  (``train.loss_chunk_mb`` 256), each chunk's logits of both models projected under activation
  checkpointing.
- **full**: the straightforward computation, as TRL's GKD trainer writes it without Liger: both
  models' full ``[n, v]`` logits, ``log_softmax`` of each, the mixture via ``logsumexp`` over the
  stacked pair, two ``kl_div``s, the sum, backward.

Each measurement runs in a fresh subprocess. Peak memory is the growth of the process's peak
RSS (``ru_maxrss``) over the loss, after the inputs and weights exist (torch's CPU allocator
keeps no statistics); step time is the best of 3. A full-vocabulary case whose estimate
(its measured bytes per position x vocabulary entry at the smallest size, times its size)
exceeds ``--max-gb`` is not run on this machine, and the table says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
D_STUDENT, D_TEACHER = 256, 512


def _heads(vocab: int) -> tuple[Any, Any]:
    import torch
    from transformers import LlamaConfig

    class Head(torch.nn.Module):  # what project_logits needs of a model: a head and a config
        def __init__(self, d: int) -> None:
            super().__init__()
            self.config = LlamaConfig(vocab_size=vocab, hidden_size=d)
            self.lm_head = torch.nn.Linear(d, vocab, bias=False)

        def get_output_embeddings(self) -> Any:
            return self.lm_head

    torch.manual_seed(0)
    student, teacher = Head(D_STUDENT), Head(D_TEACHER).requires_grad_(False)
    for head in (student, teacher):
        torch.nn.init.normal_(head.lm_head.weight, std=0.02)
    return student, teacher


def _tempering(student: Any, teacher: Any, hidden: Any, teacher_hidden: Any, targets: Any,
               vocab: int) -> Any:
    from tempering.plugins.objectives import jsd
    from tempering.train.losses import chunk_rows, chunked_per_token

    rows = chunk_rows(None, 256.0, [vocab, vocab])
    return chunked_per_token(student, jsd, hidden, targets, chunk_size=rows,
                             options={"beta": 0.5}, teacher=teacher,
                             teacher_hidden=teacher_hidden).sum()


def _full(student: Any, teacher: Any, hidden: Any, teacher_hidden: Any, targets: Any,
          vocab: int) -> Any:
    import torch
    import torch.nn.functional as F

    beta = 0.5
    student_logits = student.lm_head(hidden)
    with torch.no_grad():
        teacher_logits = teacher.lm_head(teacher_hidden)
    s = F.log_softmax(student_logits, dim=-1)
    t = F.log_softmax(teacher_logits, dim=-1)
    mixture = torch.logsumexp(torch.stack([s + torch.log(torch.tensor(1 - beta)),
                                           t + torch.log(torch.tensor(beta))]), dim=0)
    kl_teacher = F.kl_div(mixture, t, reduction="none", log_target=True)
    kl_student = F.kl_div(mixture, s, reduction="none", log_target=True)
    return (beta * kl_teacher + (1 - beta) * kl_student).sum()


def _child(method: str, vocab: int, positions: int, threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    student, teacher = _heads(vocab)
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(positions, D_STUDENT, generator=g).requires_grad_(True)
    teacher_hidden = torch.randn(positions, D_TEACHER, generator=g)
    targets = torch.randint(0, vocab, (positions,), generator=g)
    fn = _tempering if method == "tempering" else _full
    student.lm_head.weight.grad = torch.zeros_like(student.lm_head.weight)  # allocated up front
    hidden.grad = torch.zeros_like(hidden)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times, loss = [], None
    for _ in range(3):
        start = time.perf_counter()
        loss = fn(student, teacher, hidden, teacher_hidden, targets, vocab)
        loss.backward()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"method": method, "vocab": vocab, "positions": positions,
            "peak_bytes": peak - before, "seconds": min(times), "loss": float(loss)}


def _run(method: str, vocab: int, positions: int, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", method, str(vocab), str(positions),
           "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"{method} v={vocab} n={positions} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["| vocabulary | positions | tempering peak | full peak | ratio | tempering step | "
             "full step | loss (tempering / full) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t, f = r["tempering"], r.get("full")
        gb = 2 ** 30
        if f is None:
            full, ratio, step, loss = (f"not run (est. {r['full_estimate_gb']:.1f} GB)", "-", "-",
                                       f"{t['loss']:.2f} / -")
        else:
            full = f"{f['peak_bytes'] / gb:.2f} GB"
            ratio = f"{t['peak_bytes'] / f['peak_bytes']:.3f}"
            step = f"{f['seconds']:.2f} s"
            loss = f"{t['loss']:.2f} / {f['loss']:.2f}"
        lines.append(f"| {r['vocab']:,} | {r['positions']:,} | {t['peak_bytes'] / gb:.2f} GB | "
                     f"{full} | {ratio} | {t['seconds']:.2f} s | {step} | {loss} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--positions", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-gb", type=float, default=14.0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, vocab, positions = args.child
        print(json.dumps(_child(method, int(vocab), int(positions), args.threads)))
        return
    rows, per_entry = [], None
    for vocab in sorted(args.vocab):
        for positions in sorted(args.positions):
            row: dict[str, Any] = {"vocab": vocab, "positions": positions,
                                   "tempering": _run("tempering", vocab, positions, args.threads)}
            estimate = None if per_entry is None else per_entry * vocab * positions / 2 ** 30
            if estimate is not None and estimate > args.max_gb:
                row["full"], row["full_estimate_gb"] = None, estimate
            else:
                row["full"] = _run("full", vocab, positions, args.threads)
                per_entry = per_entry or row["full"]["peak_bytes"] / (vocab * positions)
            rows.append(row)
            print(_table(rows).splitlines()[-1], flush=True)
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": args.threads, "objective": "jsd beta 0.5", "budget_mb": 256,
            "d_student": D_STUDENT, "d_teacher": D_TEACHER, "max_gb": args.max_gb}
    (args.out / "kd_memory.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    (args.out / "kd_memory.md").write_text(
        "# Distillation loss memory: tempering (chunked) vs the full-vocabulary computation\n\n"
        f"`python benchmarks/kd_memory.py` on {meta['machine']}, {args.threads} threads, "
        f"torch {meta['torch']}, float32, JSD beta 0.5, d_student {D_STUDENT}, d_teacher "
        f"{D_TEACHER}. Peak: growth of peak RSS over one forward + backward (best-of-3 step "
        "time).\n\n" + _table(rows) + "\n")
    print(_table(rows))


if __name__ == "__main__":
    main()
