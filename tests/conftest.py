"""Shared fixtures: the bundled tiny tokenizer/model and the reference data beside the checkout."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TINY = ROOT / "framework" / "assets" / "tiny-llama"

# Marker strings vendor templates write; a test tokenizer registers them as special tokens,
# as the vendors' own tokenizers do.
_MARKERS = re.compile(
    r"<\|[A-Za-z0-9_ .=/-]+?\|>|<｜[^｜<>]+?｜>|<(?:start|end)_of_turn>|\[/?INST\]|</?think>"
    r"|<\|?[A-Z_]+\|?>|<\|[a-z_]+>|<[a-z_]+\|>|<(?:start|end)_of_(?:image|text)>"
    r"|\[gMASK\]|<sop>|<end_of_utterance>"
)


class _Registry:
    """The built-in components, built on first use (importing tests registers nothing)."""

    _built = None

    def __getattr__(self, name: str):
        if _Registry._built is None:
            from tempering.plugin_manager import build_plugin_manager, build_registry

            _Registry._built = build_registry(build_plugin_manager(entry_points=False))
        return getattr(_Registry._built, name)


# The registry of the built-in plugins, for tests that name components (``chatml``).
REGISTRY = _Registry()


def lively_tiny_model():
    """The bundled tiny Llama with weights larger than its initialisation's, so that greedy
    decoding gives varied tokens (float32, eval mode, seeded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY)).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    return model


def to_messages(record, fmt="auto", **kwargs):
    """``tempering.data.records.to_messages`` with the built-in record formats."""
    from tempering.data.records import to_messages as convert

    return convert(record, fmt, registry=REGISTRY, **kwargs)


@pytest.fixture()
def pm():
    """A fresh plugin manager with the built-in plugins (no entry points)."""
    from tempering.plugin_manager import build_plugin_manager

    return build_plugin_manager(entry_points=False)


@pytest.fixture()
def registry(pm):
    from tempering.plugin_manager import build_registry

    return build_registry(pm)


def template_markers(jinja: str) -> list[str]:
    return sorted(set(_MARKERS.findall(jinja)))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"reference data not found at {SHARED}")
    return SHARED


@pytest.fixture()
def tiny_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TINY)


@pytest.fixture()
def make_tokenizer():
    """A tiny tokenizer that knows a template's markers as special tokens."""
    from transformers import AutoTokenizer

    def make(jinja: str):
        tok = AutoTokenizer.from_pretrained(TINY)
        markers = [m for m in template_markers(jinja) if m not in tok.get_vocab()]
        if markers:
            tok.add_special_tokens({"additional_special_tokens": markers})
        return tok

    return make


def write_jsonl(path: Path, records: list) -> Path:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture()
def tiny_recipe(tmp_path):
    """A recipe dict for a seconds-long CPU run on generated tasks (W&B off unless asked)."""
    from tools.build_assets import generate_tasks

    train = write_jsonl(tmp_path / "train.jsonl", generate_tasks(64, seed=11))
    val = write_jsonl(tmp_path / "val.jsonl", generate_tasks(12, seed=12))
    return {
        "name": "tiny",
        "model": {"name_or_path": "bundled:tiny-llama", "init": "random", "dtype": "float32"},
        "chat_template": "chatml",
        "data": {
            "train": [{"path": str(train), "format": "messages"}],
            "validation": [{"path": str(val), "format": "messages"}],
            "max_length": 128, "batch_size": 2, "cache_dir": str(tmp_path / "cache"),
        },
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "train": {"output_dir": str(tmp_path / "run"), "seed": 3},
        "eval": {"generate_samples": 0, "before_training": False},
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 6,
                    "enable_progress_bar": False},
        "wandb": {"mode": "disabled"},
    }


def trained_texts(tok, enc) -> list[str]:
    """Decoded text of every contiguous run of trained tokens of an Encoded."""
    from tempering.chat.encoding import IGNORE_INDEX

    runs: list[list[int]] = []
    for t, label in enumerate(enc.labels):
        if label == IGNORE_INDEX:
            continue
        if runs and runs[-1][-1] == t - 1:
            runs[-1].append(t)
        else:
            runs.append([t])
    return [tok.decode([enc.input_ids[t] for t in run], skip_special_tokens=False) for run in runs]


def run_cli(recipe: dict, tmp_path: Path, name: str, *overrides: str) -> Path:
    """``tempering run`` a recipe dict in a subprocess (own output dir); returns the run dir."""
    import json
    import subprocess
    import sys

    out = tmp_path / name
    recipe = {**recipe, "train": {**recipe["train"], "output_dir": str(out)}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(recipe))
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "tempering.cli", "run", str(path), *overrides],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out


def pytest_collection_modifyitems(config, items):
    """``gpu`` tests run where a CUDA device is (skipped, with the reason, elsewhere)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def kill_after_chunks(command: list[str], env: dict, part: Path, chunks: int = 2) -> None:
    """Run ``command`` and SIGKILL it once ``part`` holds ``chunks`` whole chunks."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if part.exists() and part.read_bytes().count(b"__chunk_end__") >= chunks:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert proc.wait(60) == -signal.SIGKILL, "the stage ended before it could be killed"
