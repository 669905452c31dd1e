"""A :class:`~tempering.generate.Generator` over a transformers model in this process."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tempering.generate.base import GenerationParams

__all__ = ["HFGenerator", "stop_token_ids"]


def stop_token_ids(tokenizer: Any, model: Any, encoder: Any,
                   sample: list[dict[str, Any]]) -> list[int]:
    """EOS ids of the tokenizer and generation config, plus the template's end-of-turn token
    (the trained stop tokens of ``sample``, a conversation ending with an assistant turn)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen if isinstance(gen, list) else [gen] if gen is not None else [])
    ids.update(encoder.encode(sample).stop_ids)  # the trained end-of-turn tokens
    return sorted(ids)


class HFGenerator:
    """``model.generate`` one prompt at a time, rendered with ``encoder``'s template.

    Args:
        model: a causal LM (in eval mode while generating; its mode is restored after).
        tokenizer: its tokenizer.
        encoder: the run's :class:`tempering.ConversationEncoder` (template and its variables).
        stop_ids: token ids that end an answer (see :func:`stop_token_ids`).
        progress: the progress bar's label (None: no bar).
    """

    def __init__(self, model: Any, tokenizer: Any, encoder: Any, stop_ids: list[int],
                 progress: str | None = "Generating") -> None:
        self.model, self.tokenizer, self.encoder = model, tokenizer, encoder
        self.stop_ids, self.progress = list(stop_ids), progress

    def generate(self, prompts: Sequence[list[dict[str, Any]]],
                 params: GenerationParams) -> list[str]:
        import torch
        from tqdm.auto import tqdm

        tok, model = self.tokenizer, self.model
        pad = tok.pad_token_id if tok.pad_token_id is not None else self.stop_ids[0]
        device = next(model.parameters()).device
        sample = params.temperature > 0
        kwargs = {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p
                  } if sample else {"do_sample": False}
        if sample and params.seed is not None:
            torch.manual_seed(params.seed)
        was_training = model.training
        model.eval()
        answers = []
        try:
            with torch.no_grad():
                for messages in tqdm(prompts, desc=self.progress, leave=False,
                                     disable=self.progress is None):
                    text = self.encoder.render(list(messages), add_generation_prompt=True)
                    ids = tok(text, add_special_tokens=False,
                              return_tensors="pt")["input_ids"].to(device)
                    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                         max_new_tokens=params.max_new_tokens,
                                         eos_token_id=self.stop_ids, pad_token_id=pad,
                                         use_cache=True, **kwargs)
                    answers.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
        finally:
            model.train(was_training)
        return answers
