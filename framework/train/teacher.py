"""Before logit distillation: the teacher must speak the policy's vocabulary.

Logit objectives compare two distributions token by token, so the teacher's tokenizer must be
the policy's (the same token for the same id). Embedding matrices may still differ in size: a
model padded to a multiple of 64 or 128 rows (Qwen's 152064 for 151665 tokens) has rows no token
uses, and the loss compares the rows both models have (``tempering.train.losses.common_vocab``).
"""

from __future__ import annotations

from typing import Any

from tempering.recipe import Recipe

__all__ = ["check_teacher_vocabulary"]

_SEQUENCE = ("for a teacher with another tokenizer use sequence-level distillation: a generate "
             "stage with the teacher and a train stage on its samples (recipe "
             "distill-sequence-quickstart)")


def _differences(ours: dict[str, int], theirs: dict[str, int]) -> tuple[list[str], int]:
    keys = sorted(set(ours) ^ set(theirs) | {k for k in ours if theirs.get(k, ours[k]) != ours[k]})
    return [f"{k!r}: {ours.get(k)} vs {theirs.get(k)}" for k in keys[:3]], len(keys)


def check_teacher_vocabulary(pm: Any, recipe: Recipe, tokenizer: Any) -> None:
    """Raise a one-line ``ValueError`` unless the teacher's tokenizer is the policy's and both
    models have a row for every token."""
    from tempering.models import load_model_config

    if recipe.teacher is None:
        return
    teacher_tok = pm.hook.load_tokenizer(config=recipe.teacher)
    ours, theirs = tokenizer.get_vocab(), teacher_tok.get_vocab()
    if ours != theirs:
        examples, count = _differences(ours, theirs)
        raise ValueError(
            f"teacher: {recipe.teacher.name_or_path!r} has another tokenizer than the policy "
            f"{recipe.model.name_or_path!r} ({len(theirs)} vs {len(ours)} tokens, {count} "
            f"differ, e.g. {'; '.join(examples)}); logit distillation needs the same "
            f"vocabulary: {_SEQUENCE}")
    for key, cfg in (("model", recipe.model), ("teacher", recipe.teacher)):
        rows = load_model_config(cfg, key).get_text_config(decoder=True).vocab_size
        if rows < len(tokenizer):
            raise ValueError(f"{key}: {cfg.name_or_path!r} has {rows} output rows for a "
                             f"tokenizer of {len(tokenizer)} tokens")
