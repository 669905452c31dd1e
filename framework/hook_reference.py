"""The hook reference (``docs/hooks.md``), generated from :mod:`tempering.hookspecs` so it never
drifts from the hooks tempering calls: each hook's signature, how its results are combined, and
its docstring."""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["component_options", "hook_specs", "markdown_components", "markdown_hooks"]


def hook_specs() -> dict[str, Any]:
    """Every hook specification, by name, in definition order."""
    from tempering import hookspecs

    return {name: fn for name, fn in vars(hookspecs).items()
            if callable(fn) and hasattr(fn, "tempering_spec")}


def _semantics(fn: Any) -> str:
    opts = fn.tempering_spec
    if opts.get("firstresult"):
        return ("first result: implementations run newest first (`tryfirst`/`trylast` move "
                "them) and the first that returns something other than None decides")
    if opts.get("historic"):
        return "historic: also called for plugins registered later"
    return ("every result: each implementation's return value is collected into a list "
            "(None left out)")


def markdown_hooks() -> str:
    """Every hook as a markdown section."""
    lines = ["# Hook reference", "",
             "Generated from `tempering.hookspecs` (`python -c \"from tempering.hook_reference "
             "import markdown_hooks; print(markdown_hooks())\"`); a test fails when this file and "
             "the code disagree, and when a hook has no docstring or no test. Implement a hook "
             "with `@tempering.hookimpl` on a function of the same name in your plugin module.",
             ""]
    for name, fn in hook_specs().items():
        signature = str(inspect.signature(fn)).replace("'", "")
        lines += [f"## `{name}{signature}`", "", f"*{_semantics(fn)}*", "",
                  inspect.cleandoc(fn.__doc__ or ""), ""]
    return "\n".join(lines).rstrip() + "\n"


# The callable of each kind of component that receives the recipe's options, and the arguments
# the framework itself passes (not options).
_CALLABLES = {"record_format": "convert", "chat_template": None, "masking": "select",
              "overflow_policy": "fit", "objective": "per_token", "generator": "build",
              "metric": "score", "scorer": "score", "sample_filter": "keep",
              "evolution_operator": "prompt", "task_formatter": "format", "task": "generate"}
_FRAMEWORK_ARGS = {"teacher_logits", "context"}


def component_options(kind: str, component: Any) -> list[str]:
    """The options a recipe may give ``component`` (``name=default``), from its signature."""
    if kind == "chat_template":
        return [f"{k}={v!r}" for k, v in component.template_kwargs.items()]
    attr = _CALLABLES.get(kind)
    fn = getattr(component, attr, None) if attr else None
    if fn is None:
        return []
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    options = []
    for p in params:
        if p.name in _FRAMEWORK_ARGS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.kind == p.KEYWORD_ONLY or p.default is not p.empty:
            options.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return options


def markdown_components() -> str:
    """Every built-in component, by kind, with its description and options."""
    from tempering.components import KINDS
    from tempering.plugin_manager import build_plugin_manager, build_registry

    registry = build_registry(build_plugin_manager(entry_points=False))
    lines = ["# Built-in components", "",
             "Generated from the built-in plugins (`tempering plugins` lists installed ones "
             "too); a test fails when this file and the code disagree. A recipe picks a "
             "component by name, and gives options beside it: `{name: NAME, option: value}`.", ""]
    for kind in KINDS:
        lines += [f"## {kind.name}", "", f"{kind.description[:1].upper()}{kind.description[1:]}; "
                  f"registered with `{kind.hook}`, picked by "
                  f"{', '.join(f'`{k}`' for k in kind.recipe_keys) or 'name'}.", "",
                  "| name | what it does | options |", "| --- | --- | --- |"]
        for name in registry.names(kind.name):
            component = registry.components[kind.name][name]
            options = ", ".join(f"`{o}`" for o in component_options(kind.name, component))
            text = (getattr(component, "description", "") or "").replace("|", "\\|")
            lines.append(f"| `{name}` | {text} | {options or '-'} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
