"""Measurements the benchmarks share: useful model FLOPs, the machine's fp32 GEMM rate, the
tensors that training keeps, and this process's memory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

__all__ = ["ModelShape", "gemm_flops_per_s", "optimizer_mib", "rss_mib", "tensor_mib"]


def rss_mib(field: str = "VmRSS") -> float:
    """``VmRSS`` (now) or ``VmHWM`` (the peak since the last reset) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def tensor_mib(tensors: Any) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def gemm_flops_per_s(size: int = 2048, repeats: int = 6) -> float:
    """The best fp32 ``[size x size] @ [size x size]`` rate of this process's torch threads: the
    machine's attainable peak that utilisation is measured against."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best


def optimizer_mib(optimizer: Any) -> float:
    """The optimizer's state tensors (AdamW: two moments per trained weight)."""
    return tensor_mib(v for state in optimizer.state.values() for v in state.values()
                      if hasattr(v, "element_size") and v.dim() > 0)


class ModelShape:
    """What the useful-FLOPs count needs of a decoder: 6 x non-embedding parameters x tokens
    (forward and backward of every matmul), plus causal attention within each document
    (6 x layers x attention width x n(n+1) for a document of n tokens: QK^T and AV over the
    keys at or before each query), plus the LM head at the supervised positions only
    (6 x hidden x vocabulary each)."""

    def __init__(self, model: Any) -> None:
        config = model.config
        names = [n for n, _ in model.named_parameters()]
        embedding = {n for n in names if "embed_tokens" in n or "lm_head" in n}
        self.non_embedding = sum(p.numel() for n, p in model.named_parameters()
                                 if n not in embedding)
        self.layers = config.num_hidden_layers
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.attention_width = config.num_attention_heads * head_dim
        self.hidden, self.vocab = config.hidden_size, config.vocab_size

    def flops(self, tokens: int, documents: list[int], supervised: int) -> float:
        attention = 6 * self.layers * self.attention_width * sum(n * (n + 1) for n in documents)
        return 6 * self.non_embedding * tokens + attention + 6 * self.hidden * self.vocab * supervised
