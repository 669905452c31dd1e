"""``tempering plugins --check``: load every installed plugin and report every conflict.

:func:`tempering.plugin_manager.build_plugin_manager` stops at the first problem, which is what a
run needs. Someone with several plugins installed (or writing one) wants all of them at once:
:func:`check_plugins` loads each entry point on its own (one that fails to import is reported and
the others still load), registers each plugin on its own (one whose hooks pluggy refuses is
reported), reports every hook a plugin implements that tempering does not have, runs pluggy's
``check_pending``, and builds the registry collecting every component name registered twice and
every component of the wrong type.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass

import pluggy

from tempering import hookspecs
from tempering.plugin_manager import (
    BUILTIN_PLUGINS,
    NOT_INSTALLED,
    Registry,
    Source,
    build_registry,
    entry_point_source,
    installed_entry_points,
    load_entry_points,
    module_source,
    register_plugin,
    unknown_hooks,
)

__all__ = ["PluginCheck", "check_plugins", "plugin_sources"]


@dataclass
class PluginCheck:
    """What :func:`check_plugins` found."""

    pm: pluggy.PluginManager
    sources: dict[str, Source]  # plugin name -> its package
    registry: Registry
    problems: list[str]


def plugin_sources(pm: pluggy.PluginManager) -> dict[str, Source]:
    """The package of every plugin ``pm`` holds (built as a run builds it)."""
    from_dists = {ep.name: entry_point_source(ep) for ep in installed_entry_points()}
    return {name: from_dists.get(name) or module_source(getattr(plugin, "__name__", name))
            for name, plugin in pm.list_name_plugin()}


def check_plugins(extra_plugins: Iterable[str] = ()) -> PluginCheck:
    """Load the built-ins, every installed entry point and ``extra_plugins`` (module names),
    and collect every problem instead of stopping at the first."""
    problems: list[str] = []
    pm = pluggy.PluginManager("tempering")
    pm.add_hookspecs(hookspecs)
    for name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    sources = {name: module_source(name) for name in BUILTIN_PLUGINS}
    sources.update(load_entry_points(pm, problems))
    for name in extra_plugins:
        who = f"plugin {name!r} ({module_source(name)})"
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            problems.append(f"{who}: cannot import: {type(exc).__name__}: {exc}")
            continue
        if register_plugin(pm, module, name, problems, who):
            sources[name] = module_source(name)
    for plugin, hook, hint in unknown_hooks(pm):
        problems.append(f"plugin {plugin!r} ({sources.get(plugin, NOT_INSTALLED)}): implements "
                        f"unknown hook {hook!r}{hint}")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:  # the unknown hooks above, as pluggy sees them
        if not any("unknown hook" in p for p in problems):
            problems.append(str(exc))
    registry = build_registry(pm, problems)
    return PluginCheck(pm, sources, registry, problems)
