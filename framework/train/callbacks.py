"""Per-step logging as a Lightning Callback (contributed by the built-in ``trainer_callbacks``)."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl

from tempering.train.module import is_window_end
from tempering.train.optim import grad_norm
from tempering.train.zero import is_zero, zero_grad_norm

__all__ = ["PerfLogger"]


class PerfLogger(pl.Callback):
    """Logs ``perf/tokens_per_s`` and ``perf/supervised_tokens_per_s`` once per optimizer step
    (the window's tokens over all ranks, from the batch plan, over the step's wall time) and
    ``train/grad_norm`` before each optimizer step (under FSDP the shards' squares are summed
    over ranks; under DeepSpeed, the norm its optimizer step computed)."""

    def __init__(self) -> None:
        self._started: float | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        if self._started is None:  # first micro-batch of an optimizer step
            self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if not is_window_end(trainer, batch_idx):
            return
        elapsed = time.perf_counter() - (self._started or time.perf_counter())
        self._started = None
        if is_zero(trainer):  # computed by DeepSpeed inside its optimizer step, before clipping
            norm = zero_grad_norm(trainer)
            if norm is not None:
                pl_module.log("train/grad_norm", norm, batch_size=1)
        if elapsed > 0:
            pl_module.log_dict({
                "perf/tokens_per_s": batch["num_window_all_tokens"].float() / elapsed,
                "perf/supervised_tokens_per_s": batch["num_window_tokens"].float() / elapsed,
            }, batch_size=1)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: Any) -> None:
        from lightning.pytorch.strategies import FSDPStrategy

        if is_zero(trainer):  # called every micro-batch; the gradients live in ZeRO's buffers
            return

        def summed(t: Any) -> Any:
            return trainer.strategy.reduce(t.to(pl_module.device), reduce_op="sum")

        reduce = summed if isinstance(trainer.strategy, FSDPStrategy) else None
        params = [p for p in pl_module.parameters() if p.requires_grad]
        pl_module.log("train/grad_norm", grad_norm(params, reduce), batch_size=1)
