"""Resolving a recipe's ``chat_template`` setting and rendering conversations with it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ResolvedTemplate", "TemplateError", "resolve_chat_template", "render"]


class TemplateError(ValueError):
    """A chat template could not be resolved, rendered, or its spans located."""


@dataclass(frozen=True)
class ResolvedTemplate:
    """A concrete Jinja template plus where it came from.

    Attributes:
        name: registered name, file path, ``tokenizer`` or ``inline``.
        jinja: the template source.
        kwargs: extra variables passed to the renderer.
        special_tokens: marker strings the template writes (from its ChatTemplate, if any).
    """

    name: str
    jinja: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    special_tokens: tuple[str, ...] = ()


def _looks_like_jinja(text: str) -> bool:
    return "{%" in text or "{{" in text


def resolve_chat_template(spec: Any, tokenizer: Any, registry: Any = None) -> ResolvedTemplate:
    """Resolve ``spec`` to a template.

    Args:
        spec: a :class:`ChatTemplate`, a registered name, ``"tokenizer"`` or None (the
            tokenizer's own template), a path to a ``.jinja`` file, or a Jinja string.
        tokenizer: the tokenizer (for ``tokenizer``/None).
        registry: the component registry that registered names are looked up in (needed only
            for a name).
    """
    from tempering.components import ChatTemplate

    if isinstance(spec, ChatTemplate):
        return ResolvedTemplate(spec.name, spec.jinja, dict(spec.template_kwargs), spec.special_tokens)
    if spec is None or spec == "tokenizer":
        jinja = getattr(tokenizer, "chat_template", None)
        if isinstance(jinja, dict):
            jinja = jinja.get("default")
        if not jinja:
            raise TemplateError(
                "chat_template: tokenizer was asked for, but the tokenizer "
                f"({getattr(tokenizer, 'name_or_path', '?')}) ships no chat template; name a "
                "registered template (see `tempering plugins`) or a .jinja file"
            )
        return ResolvedTemplate("tokenizer", jinja)
    if not isinstance(spec, str):
        raise TemplateError(f"chat_template must be a name, a path or a Jinja string, not {spec!r}")
    if _looks_like_jinja(spec):
        return ResolvedTemplate("inline", spec)
    if spec.endswith(".jinja") or "/" in spec:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise TemplateError(f"chat_template file {spec!r} does not exist")
        return ResolvedTemplate(str(path), path.read_text(encoding="utf-8"))
    if registry is None:  # no hidden plugin manager: the caller's registry holds the names
        raise TemplateError(f"chat_template {spec!r} is a registered name; pass the run's "
                            "registry (tempering.build_registry(pm)) or a ChatTemplate")
    template = registry.get("chat_template", spec)
    return ResolvedTemplate(template.name, template.jinja, dict(template.template_kwargs),
                            template.special_tokens)


def render(
    tokenizer: Any,
    template: ResolvedTemplate,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = False,
) -> str:
    """Render ``messages`` to text exactly as ``tokenizer.apply_chat_template`` does."""
    try:
        return tokenizer.apply_chat_template(
            messages,
            chat_template=template.jinja,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **template.kwargs,
        )
    except TemplateError:
        raise
    except Exception as exc:  # jinja2 errors and raise_exception() from templates
        raise TemplateError(f"chat template {template.name!r} failed to render: {exc}") from exc
