"""``tempering run``: recipe -> plugins, data, model, Lightning Trainer, final model, summary."""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from tempering.console import StepProgressBar
from tempering.data.datamodule import ConversationDataModule
from tempering.plugin_manager import build_plugin_manager, build_registry
from tempering.recipe import Recipe, RecipeError, check_locations, validate_components
from tempering.run_dir import prepare_run_dir
from tempering.tracking import finish_tracking, log_run_end, log_run_start, make_logger
from tempering.train.adapters import check_lora
from tempering.train.checkpoints import GracefulStop, LastCheckpoint, RunInterrupted
from tempering.train.module import CausalLMModule
from tempering.train.teacher import check_teacher_vocabulary

__all__ = ["run_recipe", "trainer_arguments", "build_strategy"]

_TRAINER_DEFAULTS: dict[str, Any] = {
    "accelerator": "auto",
    "devices": 1,
    "max_epochs": 1,
    "gradient_clip_val": 1.0,
    "log_every_n_steps": 10,
    "num_sanity_val_steps": 0,
    "enable_model_summary": False,
    # no_grad, not inference_mode: metric states made in one validation survive into the next
    "inference_mode": False,
}


def trainer_arguments(recipe: Recipe, output_dir: Path) -> dict[str, Any]:
    """Trainer kwargs: our defaults, overridden by the recipe's ``trainer`` section."""
    # Our own callbacks write the checkpoints; Lightning's default ModelCheckpoint (a full extra
    # checkpoint per epoch under logs/) is on only where we pass one (step checkpoints).
    ours = {"default_root_dir": str(output_dir),
            "enable_checkpointing": bool(recipe.train.checkpoint_every_n_steps)}
    args = {**_TRAINER_DEFAULTS, **ours, **recipe.trainer}
    if "max_steps" in recipe.trainer and "max_epochs" not in recipe.trainer:
        args["max_epochs"] = -1  # a step budget runs as many epochs as it needs
    if isinstance(args.get("strategy"), dict):
        args["strategy"] = build_strategy(args["strategy"])
    args["use_distributed_sampler"] = False  # the batch plan assigns micro-batches to ranks
    return args


def _import_class(dotted: str) -> type:
    module, _, name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise RecipeError(f"trainer.strategy: cannot import {dotted!r}: {exc}") from None


def build_strategy(spec: dict[str, Any]) -> Any:
    """A Lightning strategy from ``{name: fsdp|ddp|deepspeed, ...its arguments}``.

    For FSDP, ``auto_wrap_policy`` and ``activation_checkpointing_policy`` may list layer classes
    by dotted path (``transformers.models.llama.modeling_llama.LlamaDecoderLayer``).
    """
    from lightning.pytorch import strategies
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    from tempering.train.zero import ZeroStrategy

    kwargs = dict(spec)
    name = kwargs.pop("name", None)
    classes = {"fsdp": strategies.FSDPStrategy, "ddp": strategies.DDPStrategy,
               "deepspeed": ZeroStrategy}
    if name not in classes:
        raise RecipeError(f"trainer.strategy.name: {name!r} is not one of {', '.join(classes)}")
    for key in ("auto_wrap_policy", "activation_checkpointing_policy"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = {_import_class(c) for c in kwargs[key]}
    try:
        return classes[name](**kwargs)
    except TypeError as exc:
        raise RecipeError(f"trainer.strategy: {exc}") from None
    except MisconfigurationException as exc:  # DeepSpeed not installed
        raise RecipeError(f"trainer.strategy: {exc}; pip install 'tempering[deepspeed]'"
                          ) from None


def _callbacks(recipe: Recipe, output_dir: Path) -> list[Any]:
    from lightning.pytorch.callbacks import ModelCheckpoint

    # Checkpoints live in the run directory: always a last.ckpt on a schedule (steps, minutes,
    # epoch ends, the end) for `train.resume_from: last`, and every N steps when asked (all kept).
    t = recipe.train
    if recipe.trainer.get("enable_checkpointing") is False:
        return []  # the recipe asked for no checkpoints at all
    folder = output_dir / "checkpoints"
    steps = t.last_checkpoint_every_n_steps or t.checkpoint_every_n_steps  # at least as fresh
    callbacks: list[Any] = [LastCheckpoint(folder, every_n_steps=steps,
                                           every_n_minutes=t.last_checkpoint_every_n_minutes)]
    if t.checkpoint_every_n_steps:
        callbacks.append(ModelCheckpoint(dirpath=str(folder), filename="step-{step}",
                                         auto_insert_metric_name=False,  # step-40.ckpt
                                         every_n_train_steps=t.checkpoint_every_n_steps,
                                         save_top_k=-1, save_last=False))
    return callbacks


def _resume_path(recipe: Recipe, output_dir: Path) -> str | None:
    where = recipe.train.resume_from
    if where == "last":
        path = output_dir / "checkpoints" / "last.ckpt"
        if not path.exists():
            raise FileNotFoundError(f"train.resume_from: last: no checkpoint at {path}")
        return str(path)
    return where


def _evaluate(module: CausalLMModule, dm: ConversationDataModule, recipe: Recipe, tokenizer: Any,
              registry: Any) -> dict[str, Any]:
    """Held-out answers scored by the metrics, and the turn-by-turn evaluation, of the model
    as it is now (empty where the recipe asks for neither)."""
    from tempering.train.evaluation import evaluate_generation, evaluate_turns

    _set_stop_tokens(module.model, tokenizer, dm)
    return {"answers": evaluate_generation(module.model, dm, recipe, tokenizer, registry),
            "turns": evaluate_turns(module.model, dm, recipe, tokenizer, registry)}


def _gathered_state_dict(trainer: pl.Trainer, module: CausalLMModule) -> dict[str, Any] | None:
    """The full model state dict under FSDP or DeepSpeed (a collective: every rank calls it),
    else None."""
    from lightning.pytorch.strategies import FSDPStrategy

    from tempering.train.zero import full_state_dict, is_zero

    if is_zero(trainer):
        return full_state_dict(trainer, module.model, _saved_dtype(module.recipe))
    if not isinstance(trainer.strategy, FSDPStrategy):
        return None
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    root = trainer.strategy.model  # FSDP around the LightningModule: keys start with "model."
    assert root is not None
    config = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
    with FSDP.state_dict_type(root, StateDictType.FULL_STATE_DICT, config):
        full = root.state_dict()
    return {k[len("model."):]: v for k, v in full.items() if k.startswith("model.")}


def _saved_dtype(recipe: Recipe) -> torch.dtype:
    """The dtype of the final weights from DeepSpeed's fp32 masters: ``model.dtype`` as the
    recipe names it (``auto``: float32, the masters' own)."""
    from tempering.models import _DTYPES

    return _DTYPES.get(recipe.model.dtype, torch.float32)


def _save_final(module: CausalLMModule, tokenizer: Any, dm: ConversationDataModule, output_dir: Path,
                state_dict: dict[str, Any] | None) -> Path:
    final = output_dir / "final"
    if module.adapters is not None:
        _save_adapters(module, final)
    else:
        module.model.save_pretrained(final, state_dict=state_dict)
    tokenizer.chat_template = dm.encoder.template.jinja  # the template it was trained with
    tokenizer.save_pretrained(final)
    # The variables the template was rendered with (e.g. enable_thinking), beside it.
    (final / "chat_template_kwargs.json").write_text(
        json.dumps(dm.encoder.template.kwargs, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return final


def _save_adapters(module: CausalLMModule, final: Path) -> None:
    """LoRA: the adapters in ``final/adapter`` and the merged model in ``final`` (or, with
    ``lora.merge: false``, the adapters and the generation config alone in ``final``)."""
    from tempering.train.adapters import merge_adapters, save_adapter

    if not module.recipe.model.lora.merge:  # type: ignore[union-attr]
        save_adapter(module.adapters, final)
        module.model.generation_config.save_pretrained(final)  # the trained stop tokens
        return
    save_adapter(module.adapters, final / "adapter")
    if module.recipe.model.lora.load_in_4bit:  # type: ignore[union-attr]
        merged = _full_precision_merge(module, final / "adapter")
    else:
        merged = merge_adapters(module.adapters)
    object.__setattr__(module, "adapters", None)  # merged: there are none left
    module.model = merged
    merged.save_pretrained(final)


def _full_precision_merge(module: CausalLMModule, adapter: Path) -> Any:
    """QLoRA: the adapters added to the base as stored (``model.dtype``), not to its 4-bit
    copy, whose rounding would end up in the saved weights."""
    from tempering.models import load_causal_lm

    cfg = dataclasses.replace(module.recipe.model, name_or_path=str(adapter), lora=None,
                              gradient_checkpointing=False)
    merged = load_causal_lm(cfg, module.recipe.train.seed)
    merged.generation_config = module.model.generation_config  # the trained stop tokens
    return merged.to(next(module.model.parameters()).device)


def _set_stop_tokens(model: Any, tokenizer: Any, dm: ConversationDataModule) -> None:
    """Generation (held-out eval and the saved ``generation_config.json``) stops where training
    taught the model to stop: the trained end-of-turn tokens, most frequent first, then the
    EOS ids the model already had."""
    if not dm.stop_token_ids:
        return
    existing = getattr(model.generation_config, "eos_token_id", None)
    if existing is None:
        existing = tokenizer.eos_token_id
    existing = existing if isinstance(existing, list) else [] if existing is None else [existing]
    ids = list(dm.stop_token_ids) + [i for i in existing if i not in dm.stop_token_ids]
    model.generation_config.eos_token_id = [int(i) for i in ids]


def _add_groups(summary: dict[str, Any], result: dict[str, Any], suffix: str) -> None:
    """A mixture's scores per split (``held_out_tasks/exact_match``, the mean over its tasks)
    and per task (``eval_by_task``: ``{"split/task": {metric, metric_before, n}}``)."""
    for split, values in result["by_split"].items():
        summary.update({f"{split}/{name}{suffix}": v for name, v in values.items()
                        if name != "tasks"})
    by_task = summary.setdefault("eval_by_task", {}) if result["by_task"] else {}
    for group, values in result["by_task"].items():
        entry = by_task.setdefault(group, {})
        entry.update({f"{name}{suffix}": v for name, v in values.items() if name != "n"},
                     n=values["n"])


def _measure_before(trainer: pl.Trainer, module: CausalLMModule, dm: ConversationDataModule,
                    recipe: Recipe, tokenizer: Any, registry: Any, summary: dict[str, Any]) -> None:
    """Validation loss and exact match of the untrained model, for comparison."""
    if _has_validation(recipe):  # Lightning prepares the data and the model for it
        results = trainer.validate(module, datamodule=dm, verbose=False)
        if results and "val/loss" in results[0]:
            summary["val_loss_before"] = results[0]["val/loss"]
            summary["val_perplexity_before"] = results[0]["val/perplexity"]
    measured = _evaluate(module, dm, recipe, tokenizer, registry)
    before = measured["answers"]
    if before:
        summary.update({f"{name}_before": v for name, v in before["scores"].items()})
        _add_groups(summary, before, "_before")
    if measured["turns"]:
        summary["multi_turn_before"] = measured["turns"]


def _finish(trainer: pl.Trainer, module: CausalLMModule, dm: ConversationDataModule, recipe: Recipe,
            tokenizer: Any, registry: Any, logger: Any, summary: dict[str, Any],
            output_dir: Path, gathered: dict[str, Any] | None) -> None:
    """Rank 0 after training: held-out generation, final model, summary file and W&B."""
    _set_stop_tokens(module.model, tokenizer, dm)
    if trainer.world_size == 1:  # generation needs the whole model on one process
        results = _evaluate(module, dm, recipe, tokenizer, registry)
        after = results["answers"]
        if results["turns"]:
            summary["multi_turn"] = results["turns"]
        if after:
            summary.update(after["scores"], eval_metrics=list(after["scores"]),
                           eval_samples=after["samples"], eval_examples=after["examples"])
            _add_groups(summary, after, "")
    elif recipe.eval.generate_samples > 0 or recipe.eval.multi_turn > 0:
        summary["eval_skipped"] = "generation eval runs in single-process runs only"
    final = (_save_final(module, tokenizer, dm, output_dir, gathered)
             if recipe.train.save_final else None)
    summary["final_model"] = str(final) if final else None
    log_run_end(logger, recipe, summary, final)
    _write_summary(logger, summary, output_dir)


def _write_summary(logger: Any, summary: dict[str, Any], output_dir: Path) -> None:
    """Close W&B (its run folder goes in the summary) and write ``summary.json``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    summary.update(finish_tracking(logger))
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))


def _interrupted(trainer: pl.Trainer, stop: GracefulStop, logger: Any, summary: dict[str, Any],
                 output_dir: Path) -> None:
    """A signal stopped training: summary marked interrupted (no final model), then raise."""
    saved = stop.last is not None
    summary.update(interrupted=stop.interrupted, final_model=None,
                   resume="train.resume_from=last" if saved else None)
    if trainer.is_global_zero:
        _write_summary(logger, summary, output_dir)
    where = (f"checkpoints/last.ckpt holds step {trainer.global_step}; continue with "
             "train.resume_from=last" if saved else "checkpointing is off, nothing was saved")
    raise RunInterrupted(str(stop.interrupted), f"interrupted by {stop.interrupted} at step "
                         f"{trainer.global_step}: {where}")


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k.replace("/", "_"): float(v) for k, v in metrics.items() if v.numel() == 1}


def _with_progress_bar(args: dict[str, Any], callbacks: list[Any]) -> list[Any]:
    """Our step-of-run progress bar, unless the recipe turned bars off or brought its own."""
    from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar

    if args.get("enable_progress_bar", True) is False or any(
            isinstance(c, ProgressBar) for c in callbacks):
        return callbacks
    return [*callbacks, StepProgressBar()]


class _RunStart(pl.Callback):
    """W&B run start (config, data statistics, example table) once the data is built."""

    def __init__(self, recipe: Recipe, dm: ConversationDataModule, tokenizer: Any) -> None:
        self.recipe, self.dm, self.tokenizer = recipe, dm, tokenizer

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            log_run_start(trainer.logger, self.recipe, self.dm, self.tokenizer)


def _plugin_callbacks(pm: Any, recipe: Recipe) -> list[Any]:
    from lightning.pytorch import Callback

    found = [c for group in pm.hook.trainer_callbacks(recipe=recipe) for c in group or []]
    for c in found:
        if not isinstance(c, Callback):
            raise TypeError(f"trainer_callbacks returned {c!r}, not a lightning Callback")
    return found


def _refuse_unsupported_early(pm: Any, recipe: Recipe) -> None:
    """Refuse an architecture whose logits the chunked loss cannot reproduce from a tiny twin,
    before any data work (the loaded model is checked again in ``configure_model``). Skipped
    when a plugin loads models its own way: the twin would not be its model."""
    from tempering.models import load_model_config
    from tempering.train.logit_check import check_logit_parity
    from tempering.train.twin import tiny_twin

    loaders = [impl.plugin_name for impl in pm.hook.load_model.get_hookimpls()]
    if loaders != ["tempering.plugins.models"]:
        return
    for key, cfg in (("model", recipe.model), ("teacher", recipe.teacher)):
        twin = tiny_twin(load_model_config(cfg, key)) if cfg is not None else None
        if twin is not None:
            check_logit_parity(twin)


def _check_adapter_strategy(recipe: Recipe, trainer: pl.Trainer) -> None:
    """LoRA adapters train in one process or under DDP (the adapters are small, so each rank
    holds the whole model); saving and merging sharded adapters is not supported."""
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    if recipe.model.lora is None or isinstance(trainer.strategy,
                                               (SingleDeviceStrategy, DDPStrategy)):
        return
    raise RecipeError(f"model.lora: adapters train in one process or under DDP "
                      f"(trainer.strategy: ddp), not under {type(trainer.strategy).__name__}")


def _has_validation(recipe: Recipe) -> bool:
    mixture = recipe.data.mixture
    return (bool(recipe.data.validation) or recipe.data.val_fraction > 0
            or bool(mixture.tasks and mixture.eval_examples))


def run_recipe(recipe: Recipe, callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Train as the recipe says; returns (and writes to ``summary.json``) the run summary.

    Lightning drives the order: ``prepare_data`` (reading and tokenizing, on local rank 0 into
    the shared cache), ``setup`` (every rank reads it back), ``configure_model`` (the policy,
    and a teacher, loaded under the strategy's initialisation context), then training.

    Args:
        recipe: the loaded recipe.
        callbacks: extra Lightning callbacks (for programmatic use).
    """
    pm = build_plugin_manager(recipe.plugins)
    registry = build_registry(pm)
    validate_components(recipe, registry)
    check_locations(recipe)
    check_lora(recipe.model)
    if recipe.data.mixture.tasks:
        from tempering.data.mixture import check_mixture

        check_mixture(recipe.data.mixture, registry)
    pl.seed_everything(recipe.train.seed, workers=True, verbose=False)
    output_dir = Path(recipe.train.output_dir.format(name=recipe.name))
    prepare_run_dir(recipe, output_dir)  # never mix this run with an earlier one
    _refuse_unsupported_early(pm, recipe)
    tokenizer = pm.hook.load_tokenizer(config=recipe.model)
    check_teacher_vocabulary(pm, recipe, tokenizer)
    dm = ConversationDataModule(recipe, tokenizer, pm, registry)
    module = CausalLMModule(recipe, pm, registry)
    logger = make_logger(recipe, output_dir)
    args = trainer_arguments(recipe, output_dir)
    if not _has_validation(recipe):
        args.setdefault("limit_val_batches", 0)  # nothing to validate on
    ours = _callbacks(recipe, output_dir)
    stop = GracefulStop(next((c for c in ours if isinstance(c, LastCheckpoint)), None))
    extra = [*_plugin_callbacks(pm, recipe), _RunStart(recipe, dm, tokenizer), *(callbacks or [])]
    trainer = pl.Trainer(logger=logger, callbacks=_with_progress_bar(args, ours + [stop] + extra),
                         **args)
    _check_adapter_strategy(recipe, trainer)
    summary: dict[str, Any] = {"recipe": recipe.name, "output_dir": str(output_dir)}
    if recipe.eval.before_training and trainer.world_size == 1 and not recipe.train.resume_from:
        _measure_before(trainer, module, dm, recipe, tokenizer, registry, summary)
    ckpt = _resume_path(recipe, output_dir)
    if ckpt and trainer.is_global_zero:
        print(f"tempering: resuming from {ckpt}", file=sys.stderr)
    started = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
    summary = {**summary, **dm.stats(), "train_seconds": round(time.perf_counter() - started, 2)}
    summary["global_step"] = trainer.global_step
    summary.update(module.parameter_counts)
    if recipe.data.packing:
        summary["packed_attention"] = module.packed_attention
    if stop.interrupted:
        _interrupted(trainer, stop, logger, summary, output_dir)
    summary["empty_micro_batches_per_epoch"] = dm.empty_micro_batches(trainer.world_size)
    metrics = _scalars(trainer.callback_metrics)
    if dm.val_data is not None and module.validated_at_step != trainer.global_step:
        trainer.validate(module, datamodule=dm, verbose=False)  # held-out loss of the final weights
        metrics.update(_scalars(trainer.callback_metrics))
    summary.update(metrics)
    gathered = _gathered_state_dict(trainer, module) if recipe.train.save_final else None
    if trainer.is_global_zero:
        _finish(trainer, module, dm, recipe, tokenizer, registry, logger, summary, output_dir,
                gathered)
    return summary
