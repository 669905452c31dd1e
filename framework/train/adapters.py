"""LoRA adapters through ``peft`` (``model.lora``): the policy's weights stay frozen and
low-rank updates train.

The adapters are injected into the loaded model in place (``peft.get_peft_model``), so the
module keeps training, evaluating and generating with the same ``transformers`` model object; the
``PeftModel`` wrapper is kept beside it only to save the adapters and to merge them at the end.
Checkpoints hold the trainable weights (adapters and ``modules_to_save``) and the optimizer, not
the frozen base, which is loaded from the recipe again on resume and checked against a
fingerprint taken when training started.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tempering.recipe import RecipeError

__all__ = ["check_lora", "require_peft", "quantization_4bit", "keep_4bit_differentiable",
           "add_lora", "is_adapter_dir", "adapter_base", "load_adapter_model", "base_fingerprint",
           "save_adapter", "merge_adapters", "parameter_counts", "ADAPTER_CONFIG"]

ADAPTER_CONFIG = "adapter_config.json"
INSTALL_HINT = "pip install 'tempering[peft]'"


def check_lora(model: Any) -> None:
    """Refuse, before any data work, adapters that could not be saved usefully; then make sure
    ``peft`` is there. ``model`` is the training run's ``ModelConfig`` (as a pipeline stage hands
    it: a later stage's model is an earlier stage's saved one)."""
    lora = model.lora
    if lora is None:
        return
    if not lora.merge and model.init == "random":
        raise RecipeError("model.lora.merge: false saves the adapters alone, which need their "
                          "base weights on disk; a model.init: random base exists only in this "
                          "run (merge them, or start from a saved model)")
    if lora.load_in_4bit and model.init == "random":
        raise RecipeError("model.lora.load_in_4bit: quantizes pretrained weights as they load; "
                          "a model.init: random base has none (start from a saved model)")
    require_peft()
    if lora.load_in_4bit:
        _require_bitsandbytes()


def _require_bitsandbytes() -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise RecipeError("model.lora.load_in_4bit: a 4-bit base needs bitsandbytes "
                          "(pip install 'tempering[qlora]')") from None


def keep_4bit_differentiable(model: Any) -> None:
    """bitsandbytes (0.50) repacks a 4-bit layer's weights for its CPU inference kernel the
    first time the layer runs in eval mode without gradients (our logit check, validation), and
    uses that kernel from then on, in training too, where it has no backward: the gradient
    through the frozen base to earlier layers' adapters would be silently wrong. Keep every
    layer on the differentiable path."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def quantization_4bit(compute_dtype: torch.dtype) -> dict[str, Any]:
    """``from_pretrained`` arguments for a QLoRA base: NF4 weights with double quantization
    (Dettmers et al., 2023), matmuls in ``compute_dtype``. Quantized where it will train: this
    rank's GPU (Lightning has set it when the module loads its model), else the CPU."""
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=compute_dtype)
    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    return {"quantization_config": config, "device_map": {"": device}}


def require_peft(key: str = "model.lora") -> Any:
    """The ``peft`` module, or a one-line error saying how to install it."""
    try:
        import peft
    except ImportError:
        raise RecipeError(f"{key}: LoRA adapters need peft ({INSTALL_HINT})") from None
    return peft


def add_lora(model: Any, cfg: Any, base_location: str) -> Any:
    """Inject LoRA adapters into ``model`` in place; returns the ``PeftModel`` wrapper.

    Only the adapters (and ``cfg.modules_to_save``) keep ``requires_grad``.
    """
    peft = require_peft()
    targets: Any = cfg.target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"  # peft's own rule: every linear layer but the output head
    config = peft.LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
        modules_to_save=list(cfg.modules_to_save) or None, use_rslora=cfg.rslora,
        bias="none", task_type="CAUSAL_LM")
    if cfg.load_in_4bit:  # norms and the head in float32, inputs that carry gradients
        with _quiet_peft():
            model = peft.prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=False)  # ours is set by model.gradient_checkpointing
    try:
        with _quiet_peft():
            wrapped = peft.get_peft_model(model, config)
    except ValueError as exc:  # e.g. target modules not found in the model
        problem = str(exc).strip().splitlines()[0]
        raise RecipeError(f"model.lora.target_modules: {problem}") from None
    # where this run's base came from (peft takes the model's own name_or_path, which for a
    # model loaded from adapters saved alone is their base's, not that folder)
    wrapped.peft_config["default"].base_model_name_or_path = base_location
    return wrapped


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    with warnings.catch_warnings():
        # peft 0.21 reads `is_gradient_checkpointing`, which transformers 5.24+ deprecates
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                category=FutureWarning)
        yield


def _numel(p: torch.Tensor) -> int:
    if hasattr(p, "ds_numel"):  # a ZeRO-3 partition: the whole tensor's size
        return int(p.ds_numel)
    shape = getattr(getattr(p, "quant_state", None), "shape", None)  # 4-bit: 2 per byte stored
    return int(torch.Size(shape).numel()) if shape is not None else p.numel()


def parameter_counts(model: Any) -> dict[str, int]:
    """Trainable and total parameters (a 4-bit weight counts its unpacked size, a ZeRO-3
    partition its whole tensor)."""
    trainable = sum(_numel(p) for p in model.parameters() if p.requires_grad)
    return {"trainable_parameters": trainable,
            "total_parameters": sum(_numel(p) for p in model.parameters())}


def base_fingerprint(model: Any) -> list[float]:
    """Sums (float64) of the frozen weights, in order: a resumed run must start from the same
    base weights, since checkpoints do not hold them."""
    with torch.no_grad():
        return [float(p.detach().double().sum()) for p in model.parameters()
                if not p.requires_grad]


def save_adapter(wrapped: Any, folder: Path) -> Path:
    """``adapter_config.json`` + ``adapter_model.safetensors`` in ``folder``."""
    # Embeddings are saved only when trained (`modules_to_save`), not by guessing from the base's
    # vocabulary (peft's "auto" looks for a config.json in the base folder, which adapters saved
    # alone by an earlier round do not have).
    wrapped.save_pretrained(str(folder), safe_serialization=True, save_embedding_layers=False)
    return folder


def merge_adapters(wrapped: Any) -> Any:
    """The base model with every adapter update added to its weights (in place)."""
    return wrapped.merge_and_unload(progressbar=False)


def is_adapter_dir(location: str) -> bool:
    """A local folder of adapters (``adapter_config.json``), as ``lora.merge: false`` saves."""
    return (Path(location) / ADAPTER_CONFIG).is_file()


def adapter_base(location: str, key: str) -> str:
    """Where the base model of the adapters in ``location`` is (their ``base_model_name_or_path``)."""
    path = Path(location) / ADAPTER_CONFIG
    try:
        base = json.loads(path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError) as exc:
        raise RecipeError(f"{key}.name_or_path: {path}: unreadable ({exc})") from None
    if not base:
        raise RecipeError(f"{key}.name_or_path: {path} names no base_model_name_or_path")
    return str(base)


def load_adapter_model(location: str, base: Any, key: str) -> Any:
    """``base`` with the adapters in ``location`` merged into its weights."""
    peft = require_peft(f"{key}.name_or_path")
    try:
        with _quiet_peft():
            wrapped = peft.PeftModel.from_pretrained(base, location)
    except (OSError, ValueError, RuntimeError) as exc:
        problem = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RecipeError(f"{key}.name_or_path: cannot load the adapters in {location}: "
                          f"{problem}") from None
    return merge_adapters(wrapped)
