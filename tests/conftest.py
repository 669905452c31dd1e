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
)


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
