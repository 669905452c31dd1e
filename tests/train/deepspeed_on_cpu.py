"""``tempering`` under DeepSpeed on the CPU, for the tests: ``python deepspeed_on_cpu.py run ...``.

DeepSpeed itself runs on the CPU (its CPU accelerator, gloo), but Lightning's DeepSpeedStrategy
refuses any accelerator but CUDA and hands DeepSpeed a CUDA device index. This lifts those two
checks and nothing else, so tempering's own DeepSpeed code (loss scaling, windows, ZeRO-3
loading, consolidation, checkpoints) runs here as it does on GPUs.
"""

from __future__ import annotations

import sys

import deepspeed
import lightning.pytorch.strategies.deepspeed as lightning_deepspeed
from lightning.pytorch.accelerators import CPUAccelerator

lightning_deepspeed.CUDAAccelerator = CPUAccelerator  # type: ignore[misc]
lightning_deepspeed._validate_device_index_selection = lambda devices: None
_initialize = deepspeed.initialize


def _on_cpu(*args, **kwargs):
    if getattr(kwargs.get("args"), "device_rank", 0) is None:  # CPU devices have no index
        kwargs["args"].device_rank = 0
    return _initialize(*args, **kwargs)


deepspeed.initialize = _on_cpu

if __name__ == "__main__":
    from tempering.cli import main

    sys.exit(main(sys.argv[1:]))
