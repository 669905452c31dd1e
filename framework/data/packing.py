"""Batch plans (packing, length grouping, rank assignment) and collation.

A *plan* is the epoch's list of micro-batches (an empty one pads the last round of ranks), each a
list of rows, each row a list of example
indices (one index without packing). The plan is global: rank ``r`` takes micro-batches
``r, r + W, r + 2W, ...``, so every micro-batch knows how many supervised tokens its whole
accumulation window holds across ranks, which is what an exact token mean needs.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from typing import Any

import torch

from tempering.chat.encoding import IGNORE_INDEX

__all__ = ["best_fit_decreasing", "plan_epoch", "window_totals", "collate_packed",
           "collate_padded", "empty_batch"]


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Pack example indices into bins of ``capacity`` tokens, best fit, longest first."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, bin id)
    for i in order:
        need = lengths[i]
        if need > capacity:
            raise ValueError(f"example {i} has {need} tokens > packing capacity {capacity}")
        at = bisect.bisect_left(free, (need, -1))
        if at < len(free):
            remaining, b = free.pop(at)
        else:
            remaining, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        bisect.insort(free, (remaining - need, b))
    return bins


def plan_epoch(lengths: Sequence[int], *, batch_size: int, max_length: int, packing: bool,
               group_by_length: bool, seed: int, epoch: int, world_size: int,
               whole_windows: int = 1) -> list[list[list[int]]]:
    """The epoch's micro-batches: a multiple of ``world_size`` of them, every example in one.

    When the micro-batches do not divide evenly among the ranks, the last round is completed
    with empty micro-batches (``[]``: no rows, nothing supervised) instead of dropping data, so
    every example is trained (and validated) each epoch on any number of ranks. With
    ``whole_windows`` (the accumulation steps, for DeepSpeed, whose accumulation windows run
    across epochs) each rank's share is completed to whole windows the same way.
    """
    rng = random.Random(seed * 100_003 + epoch)
    if packing:
        rows = best_fit_decreasing(lengths, max_length)
        rng.shuffle(rows)
    else:
        idx = list(range(len(lengths)))
        rng.shuffle(idx)
        if group_by_length:  # sort within mega-chunks so batches hold similar lengths
            chunk = batch_size * 64
            idx = [i for s in range(0, len(idx), chunk)
                   for i in sorted(idx[s:s + chunk], key=lambda i: lengths[i])]
        rows = [[i] for i in idx]
    batches = [rows[s:s + batch_size] for s in range(0, len(rows), batch_size)]
    if group_by_length or packing:
        rng.shuffle(batches)
    return batches + [[] for _ in range(-len(batches) % (world_size * whole_windows))]


def window_totals(plan: list[list[list[int]]], supervised: Sequence[int], *, world_size: int,
                  accumulate: int) -> list[int]:
    """Supervised tokens of each micro-batch's accumulation window, summed over all ranks."""
    per_batch = [sum(supervised[i] for row in b for i in row) for b in plan]
    local_count = len(plan) // world_size
    totals = [0] * len(plan)
    for start in range(0, local_count, accumulate):
        stop = min(start + accumulate, local_count)
        members = range(start * world_size, stop * world_size)
        total = sum(per_batch[m] for m in members)
        for m in members:
            totals[m] = total
    return totals


def collate_packed(examples: list[list[dict[str, Any]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows of packed examples -> input_ids, labels, position_ids (restarting per document).

    No attention mask: transformers detects the documents from the position ids (and flash
    attention uses them as varlen boundaries), so documents never attend to each other. Each
    document's first label is ignored: no position predicts across a document boundary.
    """
    width = max(sum(len(e["input_ids"]) for e in row) for row in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    pos = torch.zeros((len(examples), width), dtype=torch.long)
    for r, row in enumerate(examples):
        at = 0
        for e in row:
            n = len(e["input_ids"])
            ids[r, at:at + n] = torch.tensor(e["input_ids"])
            labels[r, at + 1:at + n] = torch.tensor(e["labels"][1:])
            pos[r, at:at + n] = torch.arange(n)
            at += n
        pos[r, at:] = torch.arange(width - at)  # padding is a document of its own
    return {"input_ids": ids, "labels": labels, "position_ids": pos}


def empty_batch(pad_id: int, *, packed: bool) -> dict[str, torch.Tensor]:
    """A one-token micro-batch with nothing supervised: it keeps every rank stepping together."""
    batch = {"input_ids": torch.full((1, 1), pad_id, dtype=torch.long),
             "labels": torch.full((1, 1), IGNORE_INDEX, dtype=torch.long)}
    if packed:
        batch["position_ids"] = torch.zeros((1, 1), dtype=torch.long)
    else:
        batch["attention_mask"] = torch.ones((1, 1), dtype=torch.long)
    batch["num_tokens"] = torch.tensor(0)
    batch["num_supervised"] = torch.tensor(0)
    batch["num_padding"] = torch.tensor(1)
    return batch


def collate_padded(examples: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded rows with an attention mask."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for r, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[r, :n] = torch.tensor(e["input_ids"])
        labels[r, :n] = torch.tensor(e["labels"])
        mask[r, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
