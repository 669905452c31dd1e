"""Scores of (prompt, completion) pairs from a reward model: any transformers
``AutoModelForSequenceClassification`` checkpoint with its own tokenizer and chat template.

Each pair is rendered with the reward model's chat template (not the policy's): the model was
trained to read conversations written that way. Rows are right-padded, so the real tokens keep
positions ``0..n-1`` and never attend to padding; the classification head reads the score at the
last non-pad token of each row (transformers' heads find it from ``config.pad_token_id``, which
is therefore always set here). Batched scores equal one-at-a-time scores.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["RewardModel"]

logger = logging.getLogger(__name__)

_DTYPES = ("auto", "float32", "bfloat16", "float16")


class RewardModel:
    """Scores (prompt messages, completion text) pairs with a sequence-classification model.

    The score of a pair:

    - ``num_labels == 1``: the head's single logit (the usual scalar reward model).
    - ``num_labels == 2``: ``logit[1] - logit[0]``, the log-odds of label 1 (the "good" or
      "chosen" class by the usual convention), a real number on the same footing as a scalar
      reward: it ranks pairs exactly as ``P(label 1)`` does.
    - any other ``num_labels``: a ``ValueError`` naming the model (its scores have no single
      meaning as a reward).

    Args:
        name_or_path: a local folder, hub id or ``bundled:`` asset with the model and tokenizer.
        batch_size: pairs per forward pass (pairs are sorted by length into batches).
        max_length: the most tokens of a pair. A longer one keeps its first token if that is
            BOS, and its last ``max_length - 1`` tokens: the score is read at the last token, so
            the end of the completion (and its end-of-turn) must survive; the start of the
            prompt is what goes. Truncated pairs are counted in :attr:`truncated` and logged.
        dtype: ``auto`` (the checkpoint's), ``float32``, ``bfloat16`` or ``float16``.
        device: where the model runs (None: ``cuda`` when available, else ``cpu``).
        chat_template: a Jinja template, or a path to a ``.jinja`` file, used instead of the
            tokenizer's own (needed when the tokenizer has none).
        trust_remote_code: passed to ``from_pretrained``.

    Raises:
        ValueError: one line naming ``name_or_path`` when there is no such model, it is not a
            sequence-classification model with a trained head, its ``num_labels`` is not 1 or
            2, or its tokenizer has no chat template and none is given.
    """

    def __init__(self, name_or_path: str, *, batch_size: int = 8, max_length: int = 2048,
                 dtype: str = "auto", device: str | None = None, chat_template: str | None = None,
                 trust_remote_code: bool = False) -> None:
        if batch_size < 1 or max_length < 2:
            raise ValueError(f"reward model {name_or_path}: batch_size >= 1 and max_length >= 2 "
                             f"are needed, got {batch_size} and {max_length}")
        if dtype not in _DTYPES:
            raise ValueError(f"reward model {name_or_path}: dtype {dtype!r} is not one of "
                             f"{', '.join(_DTYPES)}")
        self.name_or_path, self.batch_size, self.max_length = name_or_path, batch_size, max_length
        self.truncated = 0  # pairs cut to max_length, over every score() call
        self.tokenizer = _load_tokenizer(name_or_path, chat_template, trust_remote_code)
        self.model = _load_model(name_or_path, dtype, trust_remote_code)
        self.num_labels = int(self.model.config.num_labels)
        if self.num_labels not in (1, 2):
            raise ValueError(f"reward model {name_or_path}: has num_labels={self.num_labels}; a "
                             "reward model has 1 (a scalar score) or 2 (score = logit[1] - "
                             "logit[0])")
        self.pad_id = _set_pad_token(self.tokenizer, self.model)
        self.device = device or _default_device()
        self.model.to(self.device).eval()
        bos = self.tokenizer.bos_token_id
        by_default = self.tokenizer("x", add_special_tokens=True)["input_ids"]
        # The BOS the tokenizer adds on its own, added here only where the template wrote none.
        self._bos: int | None = bos if bos is not None and by_default[:1] == [bos] else None

    def render(self, prompt: list[dict[str, Any]], completion: str) -> str:
        """The exact text a pair is scored on: the reward model's template over the prompt
        followed by the completion as the assistant turn."""
        messages = [*prompt, {"role": "assistant", "content": completion}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    def token_ids(self, prompt: list[dict[str, Any]], completion: str) -> list[int]:
        """The token ids a pair is scored on (BOS once, truncated to ``max_length``)."""
        text = self.render(prompt, completion)
        ids: list[int] = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if self._bos is not None and ids[:1] != [self._bos]:
            ids = [self._bos, *ids]
        if len(ids) > self.max_length:
            self.truncated += 1
            keep = 1 if ids[0] == self.tokenizer.bos_token_id else 0
            ids = ids[:keep] + ids[len(ids) - (self.max_length - keep):]
        return ids

    def score(self, prompts: Sequence[list[dict[str, Any]]],
              completions: Sequence[str]) -> list[float]:
        """One score per pair, in input order (higher is better).

        Args:
            prompts: conversations ending before the assistant turn that is scored.
            completions: the assistant answer of each prompt.
        """
        from tqdm.auto import tqdm

        if len(prompts) != len(completions):
            raise ValueError(f"reward model {self.name_or_path}: {len(prompts)} prompts but "
                             f"{len(completions)} completions; one completion per prompt is "
                             "needed")
        truncated_before = self.truncated
        rows = [self.token_ids(list(p), c) for p, c in zip(prompts, completions, strict=True)]
        if self.truncated > truncated_before:
            logger.warning("reward model %s: %d of %d pairs were longer than max_length=%d and "
                           "lost the start of their prompt", self.name_or_path,
                           self.truncated - truncated_before, len(rows), self.max_length)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]), reverse=True)
        scores: list[float] = [0.0] * len(rows)
        bar = tqdm(total=len(rows), desc="Scoring with reward model", leave=False,
                   disable=len(rows) <= self.batch_size)
        try:
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                for index, value in zip(batch, self._forward([rows[i] for i in batch]),
                                        strict=True):
                    scores[index] = value
                bar.update(len(batch))
        finally:
            bar.close()
        return scores

    def _forward(self, rows: list[list[int]]) -> list[float]:
        """Scores of one batch of token rows (right-padded)."""
        import torch

        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [self.pad_id] * (width - len(r)) for r in rows],
                           device=self.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows],
                            device=self.device)
        with torch.no_grad():
            logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        logits = logits.float()  # [b, num_labels]
        values = logits[:, 0] if self.num_labels == 1 else logits[:, 1] - logits[:, 0]
        return [float(v) for v in values.tolist()]


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _read_template(chat_template: str) -> str:
    """A template given inline, or the text of the ``.jinja`` file it names."""
    if "{" not in chat_template and Path(chat_template).expanduser().is_file():
        return Path(chat_template).expanduser().read_text(encoding="utf-8")
    return chat_template


def _load_tokenizer(name_or_path: str, chat_template: str | None,
                    trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    from tempering.models import loading
    from tempering.recipe import resolve_bundled

    location = resolve_bundled(name_or_path)
    with loading("reward model", location):
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
    if chat_template is not None:
        tokenizer.chat_template = _read_template(chat_template)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"reward model {name_or_path}: its tokenizer has no chat template; "
                         "pass chat_template (the Jinja template the reward model was trained "
                         "with)")
    return tokenizer


def _load_model(name_or_path: str, dtype: str, trust_remote_code: bool) -> Any:
    from transformers import AutoModelForSequenceClassification

    from tempering.models import loading
    from tempering.recipe import resolve_bundled

    location = resolve_bundled(name_or_path)
    with loading("reward model", location):
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                location, dtype=dtype, trust_remote_code=trust_remote_code,
                output_loading_info=True)
        except ValueError as exc:  # an architecture with no sequence-classification class
            problem = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ValueError(f"reward model {name_or_path}: is not a sequence-classification "
                             f"model: {problem}") from exc
    prefix = getattr(model, "base_model_prefix", "") + "."
    head = sorted(k for k in info.get("missing_keys", ()) if not k.startswith(prefix))
    if head:
        raise ValueError(f"reward model {name_or_path}: has no trained classification head "
                         f"(missing {', '.join(head)}); it is not a reward model checkpoint "
                         "(a causal LM?)")
    return model


def _set_pad_token(tokenizer: Any, model: Any) -> int:
    """The padding id, set on both the tokenizer and the model config (the head reads the score
    at the last token that is not ``config.pad_token_id``): the config's own if it has one,
    else the tokenizer's pad token, else its EOS."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") \
        else model.config
    pad = config.pad_token_id
    if pad is None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
            else tokenizer.eos_token_id
    if pad is None:
        raise ValueError(f"reward model {tokenizer.name_or_path}: neither its config nor its "
                         "tokenizer defines a pad or EOS token; batched scores need one")
    config.pad_token_id = model.config.pad_token_id = pad
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad)
    return int(pad)
