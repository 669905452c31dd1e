"""Component contracts that plugins register and recipes pick by name.

These dataclasses are the stable surface third-party plugin authors write against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ChatTemplate", "ComponentKind", "KINDS", "MaskingStrategy", "Objective"]


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


@dataclass(frozen=True)
class ComponentKind:
    """One kind of component. :data:`KINDS` is the one table that drives everything about a
    kind: its registration hook (generated in :mod:`tempering.hookspecs`), building the registry,
    checking the names a recipe gives, and ``tempering plugins``.

    Attributes:
        name: the kind's name (``chat_template``), as errors and ``tempering plugins`` say it.
        hook: the registration hook plugins implement (``register_chat_templates``).
        contract: the class every registered component is an instance of.
        recipe_key: the recipe key that names one component of this kind (None: picked in code).
        description: what the components of this kind do, for the hook's docstring and listing.
        is_name: whether a recipe value names a registered component (``chat_template`` also
            takes files and inline Jinja).
        options_of: the function a component's recipe options are passed to (None: options
            are free-form, as template variables are).
        positional: how many leading parameters of that function the framework fills.
    """

    name: str
    hook: str
    contract: type
    recipe_key: str | None
    description: str
    is_name: Callable[[str], bool] = lambda value: True
    options_of: Callable[[Any], Callable[..., Any]] | None = None
    positional: int = 0

    def option_names(self, component: Any) -> set[str] | None:
        """The options a component of this kind accepts (its function's keyword parameters
        after the ``positional`` ones); None when it accepts any (``**kwargs``, templates)."""
        if self.options_of is None:
            return None
        import inspect

        params = list(inspect.signature(self.options_of(component)).parameters.values())
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return None
        return {p.name for p in params[self.positional:]
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def names_a_template(value: str) -> bool:
    """Whether a ``chat_template`` value is a registered name (not ``tokenizer``, a ``.jinja``
    path or an inline Jinja string)."""
    return not (value == "tokenizer" or value.endswith(".jinja") or "/" in value
                or "{%" in value or "{{" in value)


KINDS: tuple[ComponentKind, ...] = (
    ComponentKind("chat_template", "register_chat_templates", ChatTemplate, "chat_template",
                  "Jinja chat templates that render conversations", names_a_template),
    ComponentKind("masking", "register_masking_strategies", MaskingStrategy, "masking",
                  "which messages of a conversation are trained",
                  options_of=lambda c: c.select, positional=1),
    ComponentKind("objective", "register_objectives", Objective, "objective",
                  "losses per supervised token", options_of=lambda c: c.per_token, positional=3),
)
