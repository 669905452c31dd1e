"""DeepSpeed ZeRO (stages 1-3) under Lightning, with tempering's exact token mean kept.

``trainer.strategy: {name: deepspeed, stage: 2 | 3, ...}`` builds :class:`ZeroStrategy`, Lightning's
``DeepSpeedStrategy`` with what tempering needs on top:

- **One division by the accumulation, not two.** Lightning divides each micro-batch's loss by
  ``accumulate_grad_batches`` and DeepSpeed's ``engine.backward`` divides it again by its
  gradient accumulation steps (``scale_wrt_gas``), so gradients came out ``accumulate`` times too
  small: invisible to Adam's update direction but not to gradient clipping, the logged gradient
  norm or plain SGD. The engine is told not to divide again.
- **Whole accumulation windows per epoch.** DeepSpeed counts micro-steps across epochs while
  Lightning restarts its count each epoch, so an epoch ending inside a window would shift every
  later window. The batch plan completes the last window of an epoch with empty micro-batches
  (see :class:`tempering.data.datamodule.PlanLoader`).
- **ZeRO-3 loading.** Models are loaded through transformers' own ZeRO-3 path
  (``HfDeepSpeedConfig``), which partitions the weights as they load, pretrained or not.
- **The final model in full precision.** The saved weights are DeepSpeed's fp32 master copies
  (gathered from every rank), cast to ``model.dtype``, not the 16-bit compute copies.
- **No frozen teacher in checkpoints** (``exclude_frozen_parameters`` on by default, tied
  weights included); on resume the teacher keeps the weights it was loaded with.
- **Optimizer offload** (``offload_optimizer: true``) steps with DeepSpeed's CPU AdamW.

Lightning runs DeepSpeed on CUDA devices only.
"""

from __future__ import annotations

import warnings
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy

__all__ = ["ZeroStrategy", "is_zero", "full_state_dict", "zero_grad_norm", "is_partitioned",
           "offloads_optimizer"]


class ZeroStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeed strategy with tempering's corrections (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("exclude_frozen_parameters", True)
        super().__init__(**kwargs)
        self._hf_zero3: Any = None  # transformers holds its ZeRO-3 config by a weak reference

    def backward(self, closure_loss: torch.Tensor, optimizer: Any, *args: Any,
                 **kwargs: Any) -> torch.Tensor:
        # Lightning already divided the loss by the accumulation steps.
        return super().backward(closure_loss, optimizer, *args, scale_wrt_gas=False, **kwargs)

    @contextmanager
    def model_sharded_context(self) -> Generator[None, None, None]:
        if not self.zero_stage_3_config():
            yield
            return
        from transformers.integrations.deepspeed import HfDeepSpeedConfig

        # transformers then builds (from_config) or loads (from_pretrained) every model under
        # ZeRO-3's partitioned initialisation, placing the pretrained weights in the shards.
        self._hf_zero3 = HfDeepSpeedConfig(self.config)
        yield

    def zero_stage_3_config(self) -> bool:
        self._init_config_if_needed()
        return self.zero_stage_3

    def init_deepspeed(self) -> None:
        with warnings.catch_warnings():
            # tempering's clipping hook only adds FSDP's case; DeepSpeed clips the norm itself
            # at trainer.gradient_clip_val, as Lightning configures it.
            warnings.filterwarnings("ignore", message="Since DeepSpeed handles gradient clipping")
            super().init_deepspeed()

    def save_checkpoint(self, checkpoint: dict, filepath: Any,
                        storage_options: Any = None) -> None:
        # DeepSpeed leaves frozen parameters out by name, but a tied one (a teacher's LM head
        # sharing its embedding) appears under a second name that it keeps: drop every name.
        module = self.lightning_module
        assert module is not None
        frozen = {name for name, p in module.named_parameters(remove_duplicate=False)
                  if not p.requires_grad} if self.exclude_frozen_parameters else set()

        def drop_frozen(mod: Any, state: dict, prefix: str, metadata: Any) -> None:
            for name in frozen:
                state.pop(prefix + name, None)

        handle = module.register_state_dict_post_hook(drop_frozen)
        try:
            super().save_checkpoint(checkpoint, filepath, storage_options)
        finally:
            handle.remove()

    def teardown(self) -> None:
        super().teardown()
        if self._hf_zero3 is not None:
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()
            self._hf_zero3 = None


def is_zero(trainer: Any) -> bool:
    """Whether ``trainer`` runs under DeepSpeed."""
    return isinstance(getattr(trainer, "strategy", None), DeepSpeedStrategy)


def is_partitioned(model: Any) -> bool:
    """Whether ``model``'s weights are ZeRO-3 partitions (empty tensors on this rank)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def offloads_optimizer(trainer: Any) -> bool:
    """Whether the optimizer's states and step live on the CPU (``offload_optimizer``), where
    DeepSpeed wants its own CPU Adam rather than torch's."""
    zero = trainer.strategy.config.get("zero_optimization", {})
    return (zero.get("offload_optimizer") or {}).get("device") in ("cpu", "nvme")


def zero_grad_norm(trainer: Any) -> float | None:
    """The global gradient norm DeepSpeed computed at its last optimizer step (before clipping)."""
    engine = trainer.strategy.model
    norm = engine.get_global_grad_norm() if hasattr(engine, "get_global_grad_norm") else None
    return None if norm is None else float(norm)


def full_state_dict(trainer: Any, model: Any, dtype: torch.dtype) -> dict[str, torch.Tensor] | None:
    """The whole ``model`` on global rank 0 (None on the others), from DeepSpeed's fp32 master
    weights, cast to ``dtype``: a collective, every rank calls it.

    Each parameter is gathered alone, so no rank ever holds more than one whole tensor beyond
    its shards. A parameter without a master copy (frozen) is taken from the model itself.
    """
    from deepspeed import zero
    from deepspeed.utils import safe_get_full_fp32_param

    rank0 = trainer.is_global_zero
    state: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        full = safe_get_full_fp32_param(p) if p.requires_grad else None
        if full is None:
            with zero.GatheredParameters([p], modifier_rank=None):  # no-op below ZeRO-3
                full = p.detach().clone() if rank0 else None
        if rank0 and full is not None:
            state[name] = full.detach().to("cpu", dtype)
    if not rank0:
        return None
    names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    for name, buffer in model.state_dict().items():  # persistent buffers (not partitioned)
        if name not in names:
            state[name] = buffer.detach().to("cpu")
    return state
