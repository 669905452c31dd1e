"""What a person sees in the terminal: our progress and results, not the libraries' chatter.

- :func:`quiet_libraries` keeps Lightning's banners and tips, W&B's terminal output and
  deprecation warnings out of the console (``tempering -v`` leaves them on).
- :class:`StepProgressBar` shows the run as optimizer step N of M (Lightning's own bar counts
  batches of an epoch, and prints ``Epoch 7/-2`` under a step budget).
- :func:`run_table` is the end of a run at a glance: held-out results before and after,
  throughput, and where the model, the W&B run and ``summary.json`` are.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import warnings
from typing import Any

from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar

__all__ = ["StepProgressBar", "pipeline_table", "quiet_libraries", "rounds_markdown", "run_table"]


def quiet_libraries() -> None:
    """Hide library chatter for this process (and the rank processes it launches)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)  # GPU/TPU banner, tips, rank lines
    # bitsandbytes (imported by peft) looks for an optional CPU kernel on the hub at import and
    # warns when it is not there (offline), which changes nothing in what is computed
    for name in ("bitsandbytes", "kernels"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("WANDB_SILENT", "true")  # banner, run history, sync hints
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    warnings.filterwarnings("ignore", category=PossibleUserWarning)  # "few workers", ...


class StepProgressBar(ProgressBar):
    """``Training step 40/1000 |███    | 00:12<04:40, 3.4 step/s, loss=2.31, lr=0.003``."""

    _FORMAT = "{desc} step {n_fmt}/{total_fmt} |{bar}| {elapsed}<{remaining}, {rate_fmt}{postfix}"

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._train: Any = None
        self._val: Any = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _shown(self, trainer: Any) -> bool:
        return self._enabled and trainer.is_global_zero

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        from tqdm.auto import tqdm

        if not self._shown(trainer):
            return
        total = trainer.estimated_stepping_batches
        self._train = tqdm(total=int(total) if math.isfinite(total) else None,
                           initial=trainer.global_step, desc="Training", unit="step",
                           bar_format=self._FORMAT, dynamic_ncols=True, file=sys.stderr)

    def _refresh(self, trainer: Any) -> None:
        """Count the optimizer steps taken and show the latest logged values.

        Called when the next batch starts (the module logs a step's loss after the callbacks'
        ``on_train_batch_end``, so the values there would be one step old) and at the end.
        """
        bar = self._train
        if bar is None:
            return
        metrics = trainer.callback_metrics
        shown = {name: f"{float(metrics[key]):.4g}" for name, key in
                 (("loss", "train/loss"), ("lr", "train/lr"), ("val_loss", "val/loss"))
                 if key in metrics}
        bar.set_postfix(shown, refresh=False)
        bar.update(trainer.global_step - bar.n)  # refreshes; 0 inside an accumulation window

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                             batch_idx: int) -> None:
        if self._train is not None and trainer.global_step != self._train.n:
            self._refresh(trainer)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self._train is not None:
            self._refresh(trainer)
            self._train.close()
            self._train = None

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        from tqdm.auto import tqdm

        if not self._shown(trainer) or trainer.sanity_checking:
            return
        total = sum(n for n in trainer.num_val_batches if math.isfinite(n))
        self._val = tqdm(total=total, desc="Validating", unit="batch", leave=False,
                         dynamic_ncols=True, file=sys.stderr)

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._val is not None:
            self._val.update(1)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self._val is not None:
            self._val.close()
            self._val = None


def _number(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _perplexity(loss: Any) -> float | None:
    return None if loss is None or loss > 700 else math.exp(loss)


def _held_out_rows(s: dict[str, Any]) -> list[tuple[str, str, str]]:
    loss_before, loss_after = s.get("val_loss_before"), s.get("val_loss")
    rows = [("held-out loss", _number(loss_before), _number(loss_after)),
            ("perplexity", _number(s.get("val_perplexity_before", _perplexity(loss_before)), 2),
             _number(s.get("val_perplexity", _perplexity(loss_after)), 2))]
    for name in s.get("eval_metrics", ["exact_match"]):
        if name in s or f"{name}_before" in s:
            rows.append((f"{name.replace('_', ' ')} ({s.get('eval_samples', '?')} answers)",
                         _number(s.get(f"{name}_before"), 2), _number(s.get(name), 2)))
        rows += _split_rows(s, name, 2)
    if s.get("eval_by_task"):
        rows += [("answer loss (teacher-forced)", "", "")] + _split_rows(s, "answer_loss", 3)
    return rows + _turn_rows(s.get("multi_turn_before") or {}, s.get("multi_turn") or {})


def _split_rows(s: dict[str, Any], name: str, digits: int) -> list[tuple[str, str, str]]:
    """A task mixture's ``name`` per split (the mean over its tasks)."""
    splits = sorted({k.split("/")[0] for k in s.get("eval_by_task") or {}})
    return [(f"  {split.replace('_', ' ')}", _number(s.get(f"{split}/{name}_before"), digits),
             _number(s.get(f"{split}/{name}"), digits)) for split in splits
            if f"{split}/{name}" in s]


def _turn_rows(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``eval.multi_turn``: loss per assistant turn, stop and role-confusion rates."""
    if not after and not before:
        return []
    turns = sorted({*(before.get("turns") or {}), *(after.get("turns") or {})}, key=int)

    def at(result: dict[str, Any], turn: Any, key: str) -> Any:
        return ((result.get("turns") or {}).get(turn) or {}).get(key)

    rows = [(f"turn {t} loss", _number(at(before, t, "loss")), _number(at(after, t, "loss")))
            for t in turns if at(before, t, "loss") is not None or at(after, t, "loss")]
    answers = after.get("answers", before.get("answers", "?"))
    rows.append((f"stopped at end-of-turn ({answers} turns)",
                 _number(before.get("stop_rate"), 2), _number(after.get("stop_rate"), 2)))
    rows.append(("role confusion", _number(before.get("role_confusion_rate"), 2),
                 _number(after.get("role_confusion_rate"), 2)))
    return rows


def _wandb_line(s: dict[str, Any]) -> str:
    if s.get("wandb_url"):
        return str(s["wandb_url"])
    if s.get("wandb_dir"):
        return f"{s['wandb_dir']} (offline; upload with `wandb sync {s['wandb_dir']}`)"
    return "off"


_ROUND_COLUMNS = ("pass@1", "pass@N", "yield", "kept", "mean_score", "max_score")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def rounds_markdown(table: list[dict[str, Any]]) -> str:
    """The per-round table as markdown."""
    header = ["round", "stage", *_ROUND_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(row.get(k)) for k in header) + " |" for row in table]
    return "\n".join(lines) + "\n"


_GROWN = ("candidates", "kept", "rejected_by")


def _counts(counts: dict[str, Any]) -> str:
    return "(" + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")"


def _stage_line(entry: dict[str, Any]) -> str:
    keys = {"train": ("global_step", "val_loss", "val_perplexity"), "generate": ("prompts", "num_samples"),
            "score": ("num_samples", "mean_score"), "filter": ("candidates", "kept", "yield"),
            "eval": ("pass@1", "pass@N"), "self_instruct": _GROWN, "instances": _GROWN,
            "evolve": _GROWN}[entry["kind"]]
    shown = ", ".join(f"{k} {entry[k]:.3f}" if isinstance(entry.get(k), float) else
                      f"{k} {_counts(entry[k])}" if isinstance(entry.get(k), dict) else
                      f"{k} {entry.get(k)}" for k in keys if entry.get(k) is not None)
    return f"round-{entry['round']}/{entry['stage']}-{entry['id']:<12} {shown}"


def pipeline_table(summary: dict[str, Any]) -> str:
    """How a multi-stage run went: a line per stage, the per-round table, where things are."""
    s = summary
    lines = [f"=== {s['recipe']}: {len(s['stages'])} stages ==="]
    lines += [_stage_line(e) for e in s["stages"]]
    if s.get("rounds"):
        lines += ["", rounds_markdown(s["rounds"]).rstrip()]
    lines += [f"model    {s.get('final_model') or 'none trained'}",
              f"summary  {os.path.join(s['output_dir'], 'summary.json')} (stages in "
              "pipeline.json, rounds in rounds.md)"]
    return "\n".join(lines)


def run_table(summary: dict[str, Any]) -> str:
    """A few lines that say how a finished run went and where its outputs are."""
    s = summary
    if "stages" in s:
        return pipeline_table(s)
    lines = [f"=== {s.get('recipe', 'run')}: {s.get('global_step', 0)} steps in "
             f"{_duration(s.get('train_seconds', 0.0))} ==="]
    rows = _held_out_rows(s) if s.get("val_conversations") else []
    if rows:
        width = max(len(r[0]) for r in rows)
        lines.append(f"{'':<{width}}  {'before':>8}  {'after':>8}")
        lines += [f"{name:<{width}}  {before:>8}  {after:>8}" for name, before, after in rows]
    if "train_loss" in s:
        lines.append(f"last training loss {s['train_loss']:.3f}")
    if "perf_tokens_per_s" in s:
        lines.append(f"throughput {s['perf_tokens_per_s']:,.0f} tokens/s "
                     f"({s.get('perf_supervised_tokens_per_s', 0):,.0f} trained tokens/s)")
    trainable, total = s.get("trainable_parameters"), s.get("total_parameters")
    if trainable and total and trainable < total:  # adapters, or frozen parts
        lines.append(f"trained parameters {trainable:,} of {total:,} "
                     f"({100 * trainable / total:.1f}%)")
    if s.get("skipped_records"):
        kinds = ", ".join(f"{k} {n}" for k, n in s["skipped_records"].items())
        lines.append(f"skipped records: {kinds}")
    if s.get("eval_skipped"):
        lines.append(f"generation eval: {s['eval_skipped']}")
    lines += [f"model    {s.get('final_model') or 'not saved (train.save_final: false)'}",
              f"W&B      {_wandb_line(s)}",
              f"summary  {os.path.join(str(s.get('output_dir', '.')), 'summary.json')}"]
    return "\n".join(lines)
