"""Checkpoints in the run directory: a resumable ``last.ckpt`` on a schedule, always.

Lightning's ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` only when it saves another
checkpoint, so a run without a step schedule had nothing to resume from after a crash. This
callback rewrites ``checkpoints/last.ckpt`` every N optimizer steps and/or every M minutes, at
the end of each epoch and at the end of training. It writes a temporary file first and renames
it, so a crash while saving leaves the previous ``last.ckpt`` intact. :class:`GracefulStop` turns
SIGTERM and SIGINT into a checkpoint at the next optimizer step and a clean stop.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

__all__ = ["LastCheckpoint", "GracefulStop", "RunInterrupted"]


class LastCheckpoint(Callback):
    """Keep ``dirpath/last.ckpt`` fresh.

    Args:
        dirpath: the checkpoint folder.
        every_n_steps: save after every N optimizer steps (None: no step schedule).
        every_n_minutes: save when this many minutes passed since the last save (None: off).
    """

    def __init__(self, dirpath: Path, *, every_n_steps: int | None = None,
                 every_n_minutes: float | None = None) -> None:
        self.path = Path(dirpath) / "last.ckpt"
        self.every_n_steps = every_n_steps
        self.every_n_seconds = every_n_minutes * 60 if every_n_minutes else None
        self._saved_step = self._seen_step = -1
        self._saved_at = time.monotonic()
        self._restore: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        # Saved inside every checkpoint (a collective, as saving is): each rank's random
        # states, so dropout after a resume draws what the uninterrupted run drew.
        return {"rng_states": _gathered(_rng_state())}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = state_dict.get("rng_states")
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if states and rank < len(states):  # not for another world size: a fresh draw then
            self._restore = states[rank]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._restore is not None:  # after the model, optimizer and loops are restored
            _set_rng_state(self._restore)
            self._restore = None
        self._saved_at = time.monotonic()
        # a resumed run does not rewrite at once
        self._saved_step = self._seen_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        stepped, self._seen_step = step != self._seen_step, step
        # Only right after an optimizer step: inside an accumulation window the gradients
        # accumulated so far are in no checkpoint, so a resume from there would lose them.
        if not stepped or step == self._saved_step:
            return
        due = bool(self.every_n_steps) and step % self.every_n_steps == 0  # type: ignore[operator]
        if not due and self.every_n_seconds is not None:
            late = time.monotonic() - self._saved_at >= self.every_n_seconds
            due = bool(trainer.strategy.broadcast(late))  # every rank decides as rank 0 does
        if due:
            self.save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._saved_step:
            self.save(trainer)

    def save(self, trainer: pl.Trainer) -> None:
        """Write ``last.ckpt`` (a collective: every rank calls it)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        trainer.save_checkpoint(str(tmp), weights_only=False)  # resumable: optimizer and loops too
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            if tmp.is_dir() and self.path.exists():  # a sharded checkpoint is a folder
                shutil.rmtree(self.path) if self.path.is_dir() else self.path.unlink()
            os.replace(tmp, self.path)
        trainer.strategy.barrier()
        self._saved_step = trainer.global_step
        self._saved_at = time.monotonic()


def _rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    # plain types and tensors only: Lightning reads checkpoints with weights_only=True
    key_tensor = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [name, key_tensor, pos, has_gauss, cached]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this rank's device
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _gathered(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's ``state``, in rank order."""
    if not torch.distributed.is_initialized():
        return [state]
    states: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(states, state)
    return states


class RunInterrupted(Exception):
    """Training stopped on SIGTERM or SIGINT, after saving ``last.ckpt``.

    Attributes:
        signal_name: ``SIGTERM`` or ``SIGINT``.
        exit_code: 128 + the signal number, as a shell reports a process killed by it.
    """

    def __init__(self, signal_name: str, message: str) -> None:
        super().__init__(message)
        self.signal_name = signal_name
        self.exit_code = 128 + int(getattr(signal, signal_name, signal.SIGTERM))


class GracefulStop(Callback):
    """On SIGTERM or SIGINT: finish the optimizer step, save ``last.ckpt``, stop training.

    Lightning alone exits 0 on SIGTERM without a checkpoint, so a scheduler would record a
    killed run as a success; the run driver turns :attr:`interrupted` into a summary marked
    interrupted and a non-zero exit. A second SIGINT stops at once.

    Args:
        last: the ``last.ckpt`` writer (None when checkpointing is off).
    """

    def __init__(self, last: LastCheckpoint | None) -> None:
        self.last = last
        self.requested: str | None = None
        self.interrupted: str | None = None
        self._seen_step = -1
        self._previous: dict[int, Any] = {}

    def _request(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._seen_step = trainer.global_step
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:  # replaces Lightning's SIGTERM handler for the training loop
                self._previous[signum] = signal.signal(signum, self._request)
            except ValueError:  # not the main thread: signals are not ours to handle
                pass

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        stepped, self._seen_step = trainer.global_step != self._seen_step, trainer.global_step
        if not stepped:  # stop only between optimizer steps, where a checkpoint is exact
            return
        if not trainer.strategy.reduce_boolean_decision(self.requested is not None, all=False):
            return
        if self.last is not None and self.last._saved_step != trainer.global_step:
            self.last.save(trainer)
        self.interrupted = self.requested or "SIGTERM"  # another rank got it
        trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
