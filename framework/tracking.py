"""Run tracking with Weights & Biases through Lightning's WandbLogger."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from tempering.chat.encoding import IGNORE_INDEX
from tempering.recipe import Recipe, to_dict

__all__ = ["make_logger", "render_trained", "log_run_start", "log_run_end", "finish_tracking"]


def make_logger(recipe: Recipe, output_dir: Path) -> Any:
    """A WandbLogger (offline mode needs no account) or a CSVLogger when W&B is off.

    The W&B run id belongs to the run directory, so a resumed run continues its W&B run.
    """
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    from tempering.run_dir import wandb_run_id

    w = recipe.wandb
    if not w.enabled or w.mode == "disabled":
        return CSVLogger(save_dir=str(output_dir), name="logs")
    output_dir.mkdir(parents=True, exist_ok=True)
    run_id = wandb_run_id(output_dir, resuming=bool(recipe.train.resume_from))
    logger = WandbLogger(project=w.project, name=w.name or recipe.name, save_dir=str(output_dir),
                         offline=w.mode == "offline", tags=w.tags or None, id=run_id,
                         resume="allow", log_model=False)
    # Lightning always passes wandb's deprecated `anonymous` setting (None), which makes wandb
    # warn on every run; leaving it out is what wandb asks for.
    logger._wandb_init.pop("anonymous", None)
    return logger


def render_trained(tokenizer: Any, input_ids: list[int], labels: list[int]) -> str:
    """Decode a sequence with trained tokens wrapped in ``[[ ]]``."""
    parts, current, trained = [], [], None
    for tok, lab in zip(input_ids, labels, strict=True):
        is_trained = lab != IGNORE_INDEX
        if trained is not None and is_trained != trained:
            text = tokenizer.decode(current)
            parts.append(f"[[{text}]]" if trained else text)
            current = []
        current.append(tok)
        trained = is_trained
    if current:
        text = tokenizer.decode(current)
        parts.append(f"[[{text}]]" if trained else text)
    return "".join(parts)


def _is_wandb(logger: Any) -> bool:
    return type(logger).__name__ == "WandbLogger"


def log_run_start(logger: Any, recipe: Recipe, dm: Any, tokenizer: Any) -> None:
    """Resolved recipe and template/tokenizer identity as config; decoded examples as a table."""
    template = dm.encoder.template
    identity = {
        "template/name": template.name,
        "template/sha256": hashlib.sha256(template.jinja.encode()).hexdigest()[:16],
        "tokenizer/name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "tokenizer/vocab_size": len(tokenizer),
        "tokenizer/eos_token": tokenizer.eos_token,
        "data/stats": dm.stats(),
    }
    logger.log_hyperparams({**to_dict(recipe), **identity})
    if not _is_wandb(logger) or recipe.wandb.log_examples <= 0:
        return
    data = dm.train_data
    rows = []
    for i in range(min(recipe.wandb.log_examples, len(data))):
        ex = data[i]
        trained = tokenizer.decode([t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True)
                                    if lab != IGNORE_INDEX])
        rows.append([ex["origin"], render_trained(tokenizer, ex["input_ids"], ex["labels"]),
                     trained, ex["num_supervised"], ex["length"]])
    logger.log_table(key="train/examples", columns=["origin", "text", "trained", "supervised",
                                                     "tokens"], data=rows)


def log_run_end(logger: Any, recipe: Recipe, summary: dict[str, Any], final_dir: Path | None) -> None:
    """Summary values; the final model as an artifact when ``wandb.log_model``."""
    if not _is_wandb(logger):
        return
    run = logger.experiment
    flat = {k: v for k, v in summary.items() if isinstance(v, (int, float, str)) or v is None}
    for kind, count in summary.get("skipped_records", {}).items():
        flat[f"skipped/{kind}"] = count
    for key, value in (summary.get("overflow") or {}).items():
        flat[f"overflow/{key}"] = value
    for task, values in ((summary.get("mixture") or {}).get("tasks") or {}).items():
        flat.update({f"mixture/{task}/{k}": v for k, v in values.items()})
    for group, values in (summary.get("eval_by_task") or {}).items():
        flat.update({f"task/{group}/{k}": v for k, v in values.items()})
    for key in ("multi_turn", "multi_turn_before"):
        flat.update(_turn_keys(summary.get(key), key))
    run.summary.update(flat)
    _log_eval_tables(logger, summary)
    if recipe.wandb.log_model and final_dir is not None:
        import wandb

        artifact = wandb.Artifact(f"{recipe.name}-model", type="model")
        artifact.add_dir(str(final_dir))
        run.log_artifact(artifact)


def _turn_keys(result: dict[str, Any] | None, prefix: str) -> dict[str, Any]:
    """``multi_turn/stop_rate``, ``multi_turn/turn_2/perplexity``, ... of an
    ``eval.multi_turn`` result."""
    if not result:
        return {}
    flat = {f"{prefix}/{k}": v for k, v in result.items() if isinstance(v, (int, float))}
    flat.update({f"{prefix}/role_confusion/{kind}": n
                 for kind, n in result["role_confusion_kinds"].items()})
    for turn, values in result["turns"].items():
        flat.update({f"{prefix}/turn_{turn}/{k}": v for k, v in values.items()})
    return flat


def _log_eval_tables(logger: Any, summary: dict[str, Any]) -> None:
    """Held-out answers (``eval/examples``), the turn-by-turn answers of ``eval.multi_turn``
    (``eval/turn_generations``) and a mixture's scores per task (``eval/by_task``) as W&B
    tables."""
    examples = summary.get("eval_examples") or []
    if examples:
        logger.log_table(key="eval/examples", columns=["group", "prompt", "reference", "answer"],
                         data=[[e.get("group", ""), e["prompt"], e["reference"], e["answer"]]
                               for e in examples])
    turns = (summary.get("multi_turn") or {}).get("examples") or []
    if turns:
        columns = ["conversation", "turn", "prompt", "reference", "answer", "raw",
                   "finish_reason", "role_confusion"]
        logger.log_table(key="eval/turn_generations", columns=columns,
                         data=[[r[c] for c in columns] for r in turns])
    by_task = summary.get("eval_by_task") or {}
    metrics = sorted({k for v in by_task.values() for k in v if k != "n"})
    if by_task:
        rows = [[*group.split("/", 1), values.get("n"), *(values.get(m) for m in metrics)]
                for group, values in sorted(by_task.items())]
        logger.log_table(key="eval/by_task", columns=["split", "task", "n", *metrics], data=rows)


def finish_tracking(logger: Any) -> dict[str, str]:
    """Close the W&B run; returns where it is: ``wandb_dir`` (its local run folder, where the
    offline files are) and, for an online run, ``wandb_url``."""
    if not _is_wandb(logger):
        return {}
    run = logger.experiment
    where = {"wandb_dir": str(Path(run.dir).parent)}
    if getattr(run, "url", None):  # None for an offline run
        where["wandb_url"] = str(run.url)
    run.finish()
    return where
