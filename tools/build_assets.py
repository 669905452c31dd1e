"""Builds the bundled assets: verifiable task data, a tokenizer trained on it, a tiny Llama config.

Run ``python -m tools.build_assets [OUT_DIR]`` to regenerate ``framework/assets`` (the output
is deterministic; a test checks that the committed files are what this code produces).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

__all__ = ["SPECIAL_TOKENS", "generate_tasks", "build_tokenizer", "tiny_llama_config", "build"]

SPECIAL_TOKENS = [
    "<|pad|>", "<|begin_of_text|>", "<|end_of_text|>",
    # ChatML (the tiny tokenizer's own template)
    "<|im_start|>", "<|im_end|>",
    # markers of the other built-in templates, so every built-in template runs on the tiny model
    "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
    "[INST]", "[/INST]", "<start_of_turn>", "<end_of_turn>",
    "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>",
]

_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "po", "si", "ve", "du", "ba", "fi", "go", "he",
              "jo", "ze", "wa", "yu", "qi", "xo"]
_SYSTEM = ["You are a precise assistant.", "Answer with the result only.", "Be brief."]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3)))


def _task(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(6)
    if kind == 0:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        return f"What is {a} + {b}?", str(a + b)
    if kind == 1:
        a, b = sorted((rng.randint(0, 99), rng.randint(0, 99)), reverse=True)
        return f"What is {a} - {b}?", str(a - b)
    if kind == 2:
        w = _word(rng)
        return f"Reverse the letters of '{w}'.", w[::-1]
    if kind == 3:
        ws = " ".join(_word(rng) for _ in range(rng.randint(1, 3)))
        return f"Write '{ws}' in capital letters.", ws.upper()
    if kind == 4:
        nums = [rng.randint(0, 9) for _ in range(rng.randint(3, 5))]
        return (f"Sort {', '.join(map(str, nums))} from smallest to largest.",
                ", ".join(map(str, sorted(nums))))
    w, n = _word(rng)[:4], rng.randint(2, 4)
    return f"Repeat '{w}' {n} times.", w * n


def generate_tasks(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` verifiable conversations (1 to 3 turns, some with a system message)."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        messages: list[dict[str, str]] = []
        if rng.random() < 0.3:
            messages.append({"role": "system", "content": rng.choice(_SYSTEM)})
        for _turn in range(rng.choices([1, 2, 3], weights=[6, 3, 1])[0]):
            prompt, answer = _task(rng)
            messages += [{"role": "user", "content": prompt},
                         {"role": "assistant", "content": answer}]
        records.append({"messages": messages})
    return records


def build_tokenizer(texts: list[str], vocab_size: int = 640) -> Any:
    """Train a byte-level BPE tokenizer on ``texts``; returns a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    from tempering.plugins.chat_templates import CHATML

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|im_end|>",
        pad_token="<|pad|>", chat_template=CHATML, model_max_length=1024,
    )


def tiny_llama_config(tokenizer: Any) -> Any:
    """A ~1M-parameter Llama-architecture config sized to ``tokenizer``."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=352,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=1024, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def build(out: Path) -> None:
    """Write ``data/*.jsonl`` and ``tiny-llama/`` (config + tokenizer, no weights) under ``out``."""
    (out / "data").mkdir(parents=True, exist_ok=True)
    train, held_out = generate_tasks(6000, seed=1), generate_tasks(300, seed=2)
    _write_jsonl(out / "data" / "tasks_train.jsonl", train)
    _write_jsonl(out / "data" / "tasks_eval.jsonl", held_out)
    texts = [m["content"] for r in train for m in r["messages"]]
    tokenizer = build_tokenizer(texts)
    model_dir = out / "tiny-llama"
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(model_dir)
    tiny_llama_config(tokenizer).save_pretrained(model_dir)
    # The library version save_pretrained stamps in would make the bundled file change with
    # every transformers release (and the byte-for-byte rebuild test fail on a fresh install).
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    config.pop("transformers_version", None)
    (model_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n",
                                           encoding="utf-8")


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "assets")
