"""Component contracts that plugins register and recipes pick by name.

These dataclasses are the stable surface third-party plugin authors write against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ChatTemplate", "MaskingStrategy", "Objective"]


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template in the Hugging Face convention.

    The template sees ``messages``, ``bos_token``, ``eos_token`` and ``add_generation_prompt``,
    exactly as ``tokenizer.apply_chat_template`` renders it.

    Attributes:
        name: the name recipes use (``chat_template: llama3``).
        jinja: the template source.
        description: one line for ``tempering plugins``.
        special_tokens: marker strings the template writes that the tokenizer must know as
            single tokens; encoding with a tokenizer that lacks any of them is an error.
        template_kwargs: extra variables passed to the renderer (e.g. ``enable_thinking``).
    """

    name: str
    jinja: str
    description: str = ""
    special_tokens: tuple[str, ...] = ()
    template_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MaskingStrategy:
    """Which messages of a conversation are trained.

    Attributes:
        name: the name recipes use (``masking: last_assistant``).
        select: ``select(messages) -> list[bool]``, one flag per message; only assistant
            messages may be selected.
        all_tokens: train every token of the rendered conversation (system, user, markup and
            all); ``select`` is then not consulted.
        description: one line for ``tempering plugins``.
    """

    name: str
    select: Callable[[Sequence[dict[str, Any]]], list[bool]]
    all_tokens: bool = False
    description: str = ""


@dataclass(frozen=True)
class Objective:
    """A loss per supervised position.

    ``per_token(student_logits [n, v], labels [n], teacher_logits [n, v] | None, **options) -> [n]``.
    The framework selects the supervised positions, projects hidden states to logits in chunks
    and reduces the per-token losses to a token mean.

    Attributes:
        name: the name recipes use (``objective: cross_entropy``).
        per_token: the loss function.
        needs_teacher: whether the framework must provide ``teacher_logits``.
        description: one line for ``tempering plugins``.
    """

    name: str
    per_token: Callable[..., Any]
    needs_teacher: bool = False
    description: str = ""
