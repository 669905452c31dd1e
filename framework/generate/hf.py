"""A :class:`~tempering.generate.Generator` over a transformers model in this process.

Prompts are batched and left-padded. For ``n`` completions of a prompt, the prompt is prefilled
once and its KV cache is repeated for the ``n`` continuations (``generate`` then runs only the
last prompt token and the new ones), instead of ``num_return_sequences`` prefilling every copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tempering.generate.base import Completion, GenerationParams, prompt_token_ids

__all__ = ["HFGenerator", "stop_token_ids"]


def stop_token_ids(tokenizer: Any, model: Any, encoder: Any,
                   sample: list[dict[str, Any]] | None) -> list[int]:
    """EOS ids of the tokenizer and generation config, plus the template's end-of-turn token
    (the trained stop tokens of ``sample``, a conversation ending with an assistant turn; None
    where there is none to encode)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen if isinstance(gen, list) else [gen] if gen is not None else [])
    if sample is not None:
        ids.update(encoder.encode(sample).stop_ids)  # the trained end-of-turn tokens
    return sorted(ids)


def _cache_name(model: Any) -> str:
    """The cache argument's name: ``cache`` (transformers >= 5.24), ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class HFGenerator:
    """``model.generate`` over batches of prompts, rendered with ``encoder``'s template.

    Args:
        model: a causal LM (in eval mode while generating; its mode is restored after).
        tokenizer: its tokenizer.
        encoder: the run's :class:`tempering.ConversationEncoder` (template and its variables).
        stop_ids: token ids that end a completion (see :func:`stop_token_ids`).
        batch_size: prompts per ``generate`` call (each with its ``n`` completions).
        progress: the progress bar's label (None: no bar).
    """

    def __init__(self, model: Any, tokenizer: Any, encoder: Any, stop_ids: list[int],
                 batch_size: int = 8, progress: str | None = "Generating") -> None:
        self.model, self.tokenizer, self.encoder = model, tokenizer, encoder
        self.stop_ids, self.batch_size, self.progress = list(stop_ids), batch_size, progress
        self._cache_arg = _cache_name(model)

    def generate(self, prompts: Sequence[list[dict[str, Any]]],
                 params: GenerationParams) -> list[list[Completion]]:
        import torch
        from tqdm.auto import tqdm

        ids = [prompt_token_ids(self.tokenizer, self.encoder, m) for m in prompts]
        was_training = self.model.training
        self.model.eval()
        out: list[list[Completion]] = []
        bar = tqdm(total=len(ids), desc=self.progress, leave=False, disable=self.progress is None)
        device = next(self.model.parameters()).device
        devices = [device.index or 0] if device.type == "cuda" else []
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                for i in range(0, len(ids), self.batch_size):
                    out += self._batch(ids[i:i + self.batch_size], params)
                    bar.update(len(ids[i:i + self.batch_size]))
        finally:
            bar.close()
            self.model.train(was_training)
        return out

    def _pad(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else (self.stop_ids or [self.tokenizer.eos_token_id])[0]

    def _batch(self, prompts: list[list[int]], params: GenerationParams) -> list[list[Completion]]:
        import torch

        device = next(self.model.parameters()).device
        width, pad = max(len(p) for p in prompts), self._pad()
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts],
                            device=device)
        kwargs = self._sampling(params)
        n = params.n if params.temperature > 0 else 1  # greedy: one completion, repeated
        if width > 1:
            kwargs[self._cache_arg] = self._prefill(ids, mask, n)
        new = self.model.generate(
            input_ids=ids.repeat_interleave(n, 0), attention_mask=mask.repeat_interleave(n, 0),
            max_new_tokens=params.max_new_tokens, pad_token_id=pad,
            eos_token_id=self.stop_ids or None, use_cache=True, **kwargs)[:, width:]
        rows = [self._completion(row.tolist(), params) for row in new]
        return [[rows[j * n + (k if n > 1 else 0)] for k in range(params.n)]
                for j in range(len(prompts))]

    def _prefill(self, ids: Any, mask: Any, n: int) -> Any:
        """The KV cache of every prompt but its last token, repeated ``n`` times."""
        from transformers import DynamicCache

        cache = DynamicCache()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1],
                   position_ids=positions[:, :-1], use_cache=True, **{self._cache_arg: cache})
        if n > 1:
            cache.batch_repeat_interleave(n)
        return cache

    def _sampling(self, params: GenerationParams) -> dict[str, Any]:
        kwargs: dict[str, Any] = ({"do_sample": True, "temperature": params.temperature,
                                   "top_p": params.top_p, "top_k": params.top_k}
                                  if params.temperature > 0 else {"do_sample": False})
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        return kwargs

    def _completion(self, tokens: list[int], params: GenerationParams) -> Completion:
        stops = set(self.stop_ids)
        end = next((i for i, t in enumerate(tokens) if t in stops), None)
        kept = tokens[:end] if end is not None else tokens
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        cut = min((text.find(s) for s in params.stop if s in text), default=-1)
        raw = self.tokenizer.decode(kept, skip_special_tokens=False)
        raw_cut = min((raw.find(s) for s in params.stop if s in raw), default=-1)
        raw = raw[:raw_cut] if raw_cut >= 0 else raw  # also drops padding after a stop string
        if end is not None:
            return Completion(text[:cut] if cut >= 0 else text, end + 1, "stop", raw_text=raw)
        if cut >= 0:  # generation ended on a stop string; the rest of the row is padding
            pad = self._pad()
            while tokens and tokens[-1] == pad:
                tokens = tokens[:-1]
            return Completion(text[:cut], len(tokens), "stop", raw_text=raw)
        return Completion(text, len(tokens), "length", raw_text=raw)
