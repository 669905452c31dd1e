"""Held-out evaluation by generation: greedy answers vs the reference last assistant turn."""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from tempering.chat.encoding import ConversationEncoder
from tempering.data.sources import Conversation

__all__ = ["stop_token_ids", "exact_match"]


def stop_token_ids(tokenizer: Any, model: Any, encoder: ConversationEncoder,
                   sample: list[dict[str, Any]]) -> list[int]:
    """EOS ids of the tokenizer and generation config, plus the template's end-of-turn token."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen if isinstance(gen, list) else [gen] if gen is not None else [])
    ids.update(encoder.encode(sample).stop_ids)  # the trained end-of-turn tokens
    return sorted(ids)


@torch.no_grad()
def exact_match(model: Any, tokenizer: Any, encoder: ConversationEncoder,
                conversations: list[Conversation], *, max_new_tokens: int,
                limit: int) -> dict[str, Any]:
    """Greedy-answer the last user turn of each conversation; exact match of stripped text."""
    items = [c for c in conversations if c.messages[-1]["role"] == "assistant"][:limit]
    if not items:
        return {"exact_match": None, "samples": 0, "examples": []}
    was_training = model.training
    model.eval()
    stops = stop_token_ids(tokenizer, model, encoder, items[0].messages)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    device = next(model.parameters()).device
    hits = 0
    examples: list[dict[str, Any]] = []
    for conv in tqdm(items, desc="Generating held-out answers", leave=False):
        prompt = encoder.render(conv.messages[:-1], add_generation_prompt=True)
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=stops, pad_token_id=pad, use_cache=True)
        answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        reference = conv.messages[-1]["content"].strip()
        hits += answer == reference
        if len(examples) < 8:
            examples.append({"prompt": conv.messages[-2]["content"], "reference": reference,
                             "answer": answer})
    model.train(was_training)
    return {"exact_match": hits / len(items), "samples": len(items), "examples": examples}
