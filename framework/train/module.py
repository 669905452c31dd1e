"""The LightningModule: any causal LM, the ``compute_loss`` hook, an exact token-mean loss.

Loss normalisation. Each micro-batch carries ``num_window_tokens``: the supervised tokens of its
whole accumulation window summed over all ranks (known in advance from the batch plan). The
micro-batch returns ``loss_sum * world_size * accumulate / num_window_tokens``; Lightning divides
by ``accumulate`` and DDP/FSDP average gradients over ranks, so the optimizer step sees the
gradient of (sum of per-token losses in the window) / (supervised tokens in the window): the
mean over every supervised token of the step, whatever the micro-batch and rank split.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import SumMetric

from tempering.data.batch import Batch
from tempering.recipe import Recipe
from tempering.train.adapters import parameter_counts
from tempering.train.losses import (
    LossContext,
    LossOutput,
    chunked_per_token,
    supervised_hidden,
    token_nll,
)
from tempering.train.optim import check_update_precision, decay_groups, no_decay_names
from tempering.train.packed_attention import choose_packed_attention, use_sdpa
from tempering.train.regional_compile import compile_layers
from tempering.train.zero import is_partitioned, is_zero, offloads_optimizer

__all__ = ["CausalLMModule", "is_window_end", "lr_lambda"]


def is_window_end(trainer: Any, batch_idx: int) -> bool:
    """Whether micro-batch ``batch_idx`` ends an accumulation window (an optimizer step)."""
    accumulate = trainer.accumulate_grad_batches
    return (batch_idx + 1) % accumulate == 0 or batch_idx + 1 == trainer.num_training_batches


def _checkable_now(model: Any) -> bool:
    """The parity check runs a short forward where the model is now (the CPU, as loaded),
    which eager and sdpa attention can do; other kernels (flash attention) cannot."""
    return getattr(model.config, "_attn_implementation", None) in (None, "eager", "sdpa")


def lr_lambda(step: int, *, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak learning rate at ``step``: linear warmup, then decay."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_ratio + (1 - min_ratio) * decay


class CausalLMModule(pl.LightningModule):
    """Training of a causal LM (the ``policy``) with a pluggable loss, and a frozen teacher
    when the objective needs one.

    Args:
        recipe: the run's recipe.
        plugin_manager: the run's PluginManager (``compute_loss``, ``load_model``).
        registry: the component registry (the objective).
        model: an already built policy; loaded (``load_model`` hook, role ``policy``) in
            ``configure_model`` if None.
        teacher: an already built teacher; loaded (role ``teacher``) in ``configure_model``
            if None and the objective needs one.
    """

    adapters: Any  # peft's wrapper of the policy's LoRA adapters, or None

    def __init__(self, recipe: Recipe, plugin_manager: Any, registry: Any, model: Any = None,
                 teacher: Any = None) -> None:
        super().__init__()
        self.recipe, self.pm = recipe, plugin_manager
        self.objective = registry.get("objective", recipe.objective.name)
        self.objective_options = dict(recipe.objective.options)
        if self.objective.needs_teacher and teacher is None and recipe.teacher is None:
            raise ValueError(f"objective {self.objective.name!r} needs a teacher model "
                             "(recipe key teacher)")
        self.model = model
        self.teacher: Any = None
        if teacher is not None:
            self._set_teacher(teacher)
        self._param_names: set[str] = set()
        self._no_decay: set[str] = set()
        self._unchecked: list[Any] = []  # models whose logit check waits for the first step
        # The peft wrapper of LoRA adapters (``model.lora``): kept out of the module's children
        # (the adapters live inside ``self.model``), used to save and merge them.
        object.__setattr__(self, "adapters", None)
        self._base_fingerprint: list[float] | None = None
        self.parameter_counts: dict[str, int] = {}
        self.packed_attention: str | None = None  # what packed rows used (on_fit_start)
        if model is not None:
            self._prepare_model()
        self.val_loss_sum, self.val_nll_sum, self.val_tokens = SumMetric(), SumMetric(), SumMetric()
        self.validated_at_step: int | None = None  # the global step of the last validation
        self._window_loss: torch.Tensor | float = 0.0
        self._step_lr: float | None = None

    def configure_model(self) -> None:
        """Lightning calls this under the strategy's initialisation context (FSDP: sharded)."""
        seed = self.recipe.train.seed
        if self.model is None:
            self.model = self.pm.hook.load_model(role="policy", config=self.recipe.model,
                                                 seed=seed)
            self._prepare_model()
        if self.teacher is None and self.objective.needs_teacher and not self.cached_teacher:
            self._set_teacher(self.pm.hook.load_model(role="teacher", config=self.recipe.teacher,
                                                      seed=seed))

    def _set_teacher(self, teacher: Any) -> None:
        """Frozen and in eval mode; checked like the policy; never in a checkpoint."""
        teacher.requires_grad_(False)
        self.teacher = teacher.eval()
        self._check_logits(teacher)

    def _check_logits(self, model: Any) -> None:
        """Refuse an architecture whose logits the chunked loss would not reproduce: now, or on
        the first step for kernels that cannot run here (flash attention) and ZeRO-3
        partitions (whose weights are gathered only inside the engine)."""
        from tempering.train.logit_check import check_logit_parity

        if _checkable_now(model) and not is_partitioned(model):
            check_logit_parity(model)
        else:
            self._unchecked.append(model)

    def train(self, mode: bool = True) -> CausalLMModule:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # dropout stays off in the teacher
        return self

    def _trainable_keys(self) -> set[str]:
        """State-dict keys of the policy's trained weights (with adapters: the adapters and
        ``modules_to_save``; everything else is the frozen base, 4-bit quantization state
        included)."""
        return {f"model.{n}" for n, p in self.model.named_parameters(remove_duplicate=False)
                if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("teacher.")]:
            del state[key]
        if self.adapters is not None:  # the base is loaded from the recipe again on resume
            from tempering.train.adapters import base_fingerprint

            trained = self._trainable_keys()
            for key in [k for k in state if k.startswith("model.") and k not in trained]:
                del state[key]
            if self._base_fingerprint is None:
                self._base_fingerprint = base_fingerprint(self.model)
            checkpoint["lora_base_fingerprint"] = self._base_fingerprint

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.setdefault("state_dict", {})
        if self.teacher is not None:  # the teacher comes from its own weights, not the ckpt
            state.update({f"teacher.{k}": v for k, v in self.teacher.state_dict().items()})
        if self.adapters is not None and "lora_base_fingerprint" in checkpoint:
            self._check_base(checkpoint["lora_base_fingerprint"])
            own = self.state_dict()
            state.update({k: v for k, v in own.items() if k.startswith("model.") and k not in state})

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        # DeepSpeed restores the module from its own checkpoint files before on_load_checkpoint
        # could add the teacher's weights, and its checkpoints leave the frozen teacher out: the
        # teacher keeps the weights it was loaded with, every other key is still required.
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not k.startswith("teacher.")]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"loading {type(self).__name__}: missing keys {missing[:5]}, "
                               f"unexpected keys {result.unexpected_keys[:5]}")
        return result

    def _check_base(self, saved: list[float]) -> None:
        from tempering.train.adapters import base_fingerprint

        now = base_fingerprint(self.model)
        same = len(now) == len(saved) and all(
            math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) for a, b in zip(now, saved, strict=True))
        if not same:
            from tempering.recipe import RecipeError

            raise RecipeError(
                "train.resume_from: the checkpoint's LoRA adapters were trained on other base "
                f"weights than {self.recipe.model.name_or_path} loads now (checkpoints of "
                "adapter runs do not hold the frozen base); resume with the same model")
        self._base_fingerprint = now

    def _prepare_model(self) -> None:
        """On the model as loaded, before any wrapping or sharding: refuse an architecture whose
        logits the chunked loss would not reproduce, and decide the weight-decay groups."""
        from tempering.train.optim import clean_name

        self._check_logits(self.model)
        if self.recipe.model.lora is not None:
            from tempering.recipe import resolve_bundled
            from tempering.train.adapters import add_lora

            base = resolve_bundled(self.recipe.model.name_or_path)
            object.__setattr__(self, "adapters", add_lora(self.model, self.recipe.model.lora, base))
        self.parameter_counts = parameter_counts(self.model)  # before any sharding
        self._param_names = {clean_name(n) for n, _ in self.model.named_parameters()}
        self._no_decay = no_decay_names(self.model)

    # -- steps ------------------------------------------------------------------------------

    @property
    def cached_teacher(self) -> bool:
        """The teacher's top-k comes with the batches (``train.teacher_top_k``): no teacher
        model is loaded for training."""
        return bool(self.recipe.train.teacher_top_k) and self.objective.needs_teacher

    @property
    def loss_chunk_size(self) -> int:
        """Positions per loss chunk: the recipe's, or what its byte budget allows at the
        vocabularies of the policy and the teacher."""
        from tempering.train.losses import chunk_rows, vocab_size

        models = [m for m in (self.model, self.teacher) if m is not None]
        vocabularies = [vocab_size(m) for m in models]
        if self.cached_teacher and self.model is not None:  # its rows are rebuilt at ours
            vocabularies.append(vocab_size(self.model))
        return chunk_rows(self.recipe.train.loss_chunk_size, self.recipe.train.loss_chunk_mb,
                          vocabularies)

    def loss_context(self) -> LossContext:
        return LossContext(self.model, self.objective, self.objective_options,
                           self.loss_chunk_size, self.teacher, self.recipe.train.teacher_tail)

    def _loss(self, batch: Batch) -> LossOutput:
        if self._unchecked:  # every rank, on the first micro-batch (a forward of its own)
            from tempering.train.logit_check import check_logit_parity

            for model in self._unchecked:
                check_logit_parity(model)
            self._unchecked = []
        out = self.pm.hook.compute_loss(context=self.loss_context(), batch=batch)
        if out is None:
            raise RuntimeError("no compute_loss plugin returned a loss")
        return out

    def on_fit_start(self) -> None:
        # transformers returns pretrained models in eval mode and Lightning (2.2+) keeps the
        # mode it finds, so without this a pretrained policy trained with its dropout off
        # (LoRA's included); validation restores train mode after itself.
        self.train()
        self.packed_attention = choose_packed_attention(self.recipe, self.model, self.teacher,
                                                        self.device)
        if self.recipe.train.compile:
            compile_layers(self.model)

    def on_fit_end(self) -> None:  # held-out generation and the saved model: plain SDPA again
        for model in (self.model, self.teacher):
            if model is not None:
                use_sdpa(model)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._step_lr is None:  # first micro-batch of an optimizer step
            self._step_lr = self.trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if is_window_end(self.trainer, batch_idx):  # after backward and the optimizer step
            self._log_window(batch)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        out = self._loss(batch)
        window = batch["num_window_tokens"].clamp(min=1).to(out.loss_sum.dtype)
        scale = self.trainer.world_size * self.trainer.accumulate_grad_batches / window
        loss = out.loss_sum * scale
        self._window_loss = self._window_loss + out.loss_sum.detach() / window  # no host sync
        n = batch["input_ids"].numel()
        self.log_dict({
            "train/supervised_ratio": batch["num_supervised"].float() / max(1, n),
            "train/padding_ratio": batch["num_padding"].float() / max(1, n),
            **{f"train/{k}": v for k, v in out.metrics.items()},
        }, on_step=True, on_epoch=False, batch_size=1)
        return loss

    def _log_window(self, batch: Batch) -> None:
        loss = torch.as_tensor(self._window_loss, device=self.device, dtype=torch.float32)
        self.log("train/loss", loss, reduce_fx="sum", sync_dist=True, prog_bar=True, batch_size=1)
        self.log("train/lr", self._step_lr or 0.0, batch_size=1)
        self._window_loss, self._step_lr = 0.0, None

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        out = self._loss(batch)
        self.val_loss_sum.update(out.loss_sum)
        self.val_tokens.update(out.num_tokens)
        # Perplexity is exp of the plain NLL whatever the objective (label smoothing, KL, a
        # wrapping plugin's extra terms): the loss hook reports it, or it is computed here.
        nll = out.nll_sum if out.nll_sum is not None else self._nll_sum(batch)
        self.val_nll_sum.update(nll)

    def _nll_sum(self, batch: Batch) -> torch.Tensor:
        hidden, targets = supervised_hidden(self.model, batch)
        return chunked_per_token(self.model, token_nll, hidden, targets,
                                 chunk_size=self.loss_chunk_size).sum()

    def on_validation_epoch_end(self) -> None:
        tokens = self.val_tokens.compute().clamp(min=1)
        loss = self.val_loss_sum.compute() / tokens
        nll = self.val_nll_sum.compute() / tokens
        self.log_dict({"val/loss": loss, "val/perplexity": torch.exp(nll)}, prog_bar=True,
                      sync_dist=False)
        for metric in (self.val_loss_sum, self.val_nll_sum, self.val_tokens):
            metric.reset()
        if not self.trainer.sanity_checking:
            self.validated_at_step = self.trainer.global_step

    # -- optimization -----------------------------------------------------------------------

    def _sharded(self) -> bool:
        from lightning.pytorch.strategies import FSDPStrategy

        return isinstance(self.trainer.strategy, FSDPStrategy)

    def _sum_over_ranks(self, t: torch.Tensor) -> torch.Tensor:
        return self.trainer.strategy.reduce(t.to(self.device), reduce_op="sum")

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any = None,
                                    gradient_clip_algorithm: Any = None) -> None:
        if gradient_clip_val and self._sharded() and gradient_clip_algorithm in (None, "norm"):
            # Lightning refuses norm clipping under FSDP; the root FSDP module clips the norm of
            # the whole (sharded) gradient correctly.
            root: Any = self.trainer.strategy.model
            root.clip_grad_norm_(float(gradient_clip_val))
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> Any:
        o = self.recipe.optim
        # DeepSpeed updates fp32 master weights whatever the precision of the model's copy.
        frozen = [] if is_zero(self.trainer) else check_update_precision(
            self.model.named_parameters(), o.lr,
            self._sum_over_ranks if self.trainer.world_size > 1 else None)
        if frozen:
            rank_zero_warn(
                f"optim.lr {o.lr:g}: most updates round away in {len(frozen)} low-precision "
                f"parameter tensors ({', '.join(frozen[:3])}{', ...' if len(frozen) > 3 else ''}), "
                "which then barely train; fp32 master weights (bf16-mixed) avoid it")
        groups = decay_groups(self.model.named_parameters(), self._no_decay, self._param_names,
                              o.weight_decay)
        adamw = torch.optim.AdamW
        if is_zero(self.trainer) and offloads_optimizer(self.trainer):
            from deepspeed.ops.adam import DeepSpeedCPUAdam  # the same AdamW, on the CPU

            adamw = DeepSpeedCPUAdam
        optimizer = adamw(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = o.warmup_steps or int(o.warmup_ratio * total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_lambda(s, warmup=warmup, total=total, schedule=o.scheduler,
                                           min_ratio=o.min_lr_ratio))
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
