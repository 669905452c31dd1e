"""Offline distillation: the teacher runs once over the tokenized data, and its top-k
log-probabilities at every supervised position are cached with ``datasets``.

The cache has one row per tokenized example (aligned to the student's tokens: the same
``input_ids`` and labels the student trains on) with ``teacher_ids`` and ``teacher_logprobs``,
``k`` entries per supervised position, in position order (int32 and float16: 6 bytes per entry).
It is keyed by the examples' tokens, the teacher's identity and ``k``, so a second run, or the
other ranks, read it back. Training then rebuilds each chunk's teacher distribution from it
(``tempering.train.losses.dense_logprobs``) with a stated policy for the mass outside the top k:

- ``uniform``: the teacher's remaining mass, ``1 - sum(top-k probabilities)``, is spread evenly
  over the other ``v - k`` tokens (the distribution keeps its total and its top-k exactly);
- ``renormalize``: the top k are renormalized to sum to 1 and every other token has probability 0.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tempering.chat.encoding import IGNORE_INDEX

__all__ = ["CACHE_FORMAT", "topk_logprobs", "compute_topk", "attach_teacher_cache"]

CACHE_FORMAT = 1


def topk_logprobs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest log-probabilities of each row (float32) and their token ids."""
    values, ids = torch.log_softmax(logits.float(), dim=-1).topk(k, dim=-1)
    return ids.to(torch.int32), values


def compute_topk(teacher: Any, data: Any, k: int, vocab: int, *, batch_size: int = 8,
                 pad_id: int = 0, group: int = 1024,
                 desc: str = "Caching the teacher") -> Iterator[dict[str, list]]:
    """``teacher_ids`` / ``teacher_logprobs`` per example of ``data`` (input_ids, labels): the
    top ``k`` of the teacher's distribution over the first ``vocab`` rows at each position
    whose next token is supervised; yielded ``group`` examples at a time, so memory stays
    bounded however large the data."""
    from tqdm.auto import tqdm

    device = next(teacher.parameters()).device
    out: dict[str, list] = {"teacher_ids": [], "teacher_logprobs": []}
    with torch.no_grad(), tqdm(total=len(data), desc=desc, unit="example") as bar:
        for start in range(0, len(data), batch_size):
            rows = [data[i] for i in range(start, min(len(data), start + batch_size))]
            for ids, lps in _batch_topk(teacher, rows, k, vocab, pad_id, device):
                out["teacher_ids"].append(ids)
                out["teacher_logprobs"].append(lps)
            bar.update(len(rows))
            if len(out["teacher_ids"]) >= group:
                yield out
                out = {"teacher_ids": [], "teacher_logprobs": []}
    if out["teacher_ids"]:
        yield out


def _batch_topk(teacher: Any, rows: list[dict[str, Any]], k: int, vocab: int, pad_id: int,
                device: Any) -> list[tuple[list[int], list[float]]]:
    """One padded batch through the teacher: each example's flattened top-k ids and values."""
    from tempering.data.packing import collate_padded
    from tempering.train.losses import chunk_rows, forward_hidden, project_logits

    batch = {key: v.to(device) for key, v in collate_padded(rows, pad_id).items()}
    mask = batch["labels"][:, 1:] != IGNORE_INDEX
    hidden = forward_hidden(teacher, batch)[:, :-1][mask]
    step = chunk_rows(None, 256.0, [vocab])
    ids, lps = [torch.zeros((0, k), dtype=torch.int32)], [torch.zeros((0, k), dtype=torch.float16)]
    for i in range(0, hidden.shape[0], step):
        part_ids, part_lps = topk_logprobs(project_logits(teacher, hidden[i:i + step])[:, :vocab], k)
        ids.append(part_ids.cpu())
        lps.append(part_lps.to(torch.float16).cpu())
    flat_ids, flat_lps = torch.cat(ids), torch.cat(lps)
    out, at = [], 0
    for count in mask.sum(1).tolist():
        out.append((flat_ids[at:at + count].flatten().tolist(),
                    flat_lps[at:at + count].flatten().tolist()))
        at += count
    return out


def _key(data: Any, recipe: Any, k: int, vocab: int) -> str:
    import numpy as np

    from tempering import __version__

    h = hashlib.sha256()
    teacher = recipe.teacher
    h.update(json.dumps([__version__, CACHE_FORMAT, k, vocab, teacher.name_or_path,
                         teacher.revision, teacher.init, teacher.dtype, recipe.train.seed,
                         teacher.config_overrides], sort_keys=True, default=str).encode())
    for ids, labels in zip(data["input_ids"], data["labels"], strict=True):
        h.update(np.asarray(ids, dtype=np.int32).tobytes())
        h.update(np.asarray(labels, dtype=np.int32).tobytes())
    return h.hexdigest()[:24]


def attach_teacher_cache(data: Any, recipe: Any, load_teacher: Any, vocab: int, pad_id: int,
                         cache_dir: Path, split: str) -> tuple[Any, dict[str, Any]]:
    """``data`` with the teacher's cached top-k columns (computed and saved the first time),
    and what it cost: bytes per supervised token, where it is, whether it was read back."""
    import datasets

    k = recipe.train.teacher_top_k
    if k > vocab:
        raise ValueError(f"train.teacher_top_k: {k} is more than the vocabulary ({vocab})")
    folder = cache_dir / f"teacher-{_key(data, recipe, k, vocab)}"
    reused = folder.exists()
    if not reused:
        features = datasets.Features({
            "teacher_ids": datasets.Sequence(datasets.Value("int32")),
            "teacher_logprobs": datasets.Sequence(datasets.Value("float16"))})
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        groups = compute_topk(load_teacher(), data, k, vocab, pad_id=pad_id,
                              desc=f"Caching the teacher ({split})")
        for i, columns in enumerate(groups):
            datasets.Dataset.from_dict(columns, features=features).save_to_disk(
                str(partial / f"shard-{i:05d}"))
        partial.rename(folder)  # whole or absent: a killed run computes it again
    cached = datasets.concatenate_datasets(
        [datasets.load_from_disk(str(p)) for p in sorted(folder.glob("shard-*"))])
    if len(cached) != len(data):
        raise RuntimeError(f"{folder} holds {len(cached)} rows for {len(data)} examples")
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    supervised = max(1, int(sum(data["num_supervised"][:])))
    stats = {"path": str(folder), "top_k": k, "reused": reused,
             "bytes_per_token": size / supervised}
    return datasets.concatenate_datasets([data, cached], axis=1), stats
