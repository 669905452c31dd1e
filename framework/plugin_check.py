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
import importlib.metadata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pluggy

import tempering
from tempering import hookspecs
from tempering.plugin_manager import (
    BUILTIN_PLUGINS,
    Registry,
    closest,
    installed_entry_points,
)

__all__ = ["PluginCheck", "Source", "check_plugins", "module_source", "plugin_sources"]


@dataclass(frozen=True)
class Source:
    """The installed package a plugin comes from."""

    package: str
    version: str

    def __str__(self) -> str:
        return f"{self.package} {self.version}"


BUILTIN = Source("tempering", tempering.__version__)
NOT_INSTALLED = Source("(not installed)", "-")


@dataclass
class PluginCheck:
    """What :func:`check_plugins` found."""

    pm: pluggy.PluginManager
    sources: dict[str, Source]  # plugin name -> its package
    registry: Registry
    problems: list[str]


def module_source(module_name: str) -> Source:
    """The installed distribution that provides ``module_name``'s top-level package."""
    top = module_name.split(".")[0]
    if top == "tempering":
        return BUILTIN
    names = importlib.metadata.packages_distributions().get(top, [])
    for name in names:
        try:
            return Source(name, importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            continue
    return NOT_INSTALLED


def _entry_point_source(ep: Any) -> Source:
    dist = getattr(ep, "dist", None)
    return Source(dist.metadata["Name"], dist.version) if dist is not None else NOT_INSTALLED


def plugin_sources(pm: pluggy.PluginManager) -> dict[str, Source]:
    """The package of every plugin ``pm`` holds (built as a run builds it)."""
    from_dists = {ep.name: _entry_point_source(ep) for ep in installed_entry_points()}
    return {name: from_dists.get(name) or module_source(getattr(plugin, "__name__", name))
            for name, plugin in pm.list_name_plugin()}


def _register(pm: pluggy.PluginManager, plugin: Any, name: str, problems: list[str],
              who: str) -> bool:
    if pm.is_registered(plugin):
        return False
    try:
        pm.register(plugin, name=name)
    except (ValueError, pluggy.PluginValidationError) as exc:  # a name taken, a bad hook
        problems.append(f"{who}: not registered: " + "; ".join(str(exc).splitlines()))
        return False
    return True


def check_plugins(extra_plugins: Iterable[str] = ()) -> PluginCheck:
    """Load the built-ins, every installed entry point and ``extra_plugins`` (module names),
    and collect every problem instead of stopping at the first."""
    from tempering.plugin_manager import build_registry

    problems: list[str] = []
    sources: dict[str, Source] = {}
    pm = pluggy.PluginManager("tempering")
    pm.add_hookspecs(hookspecs)
    for name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
        sources[name] = BUILTIN
    for ep in installed_entry_points():
        source = _entry_point_source(ep)
        who = f"plugin {ep.name!r} ({source})"
        try:
            plugin = ep.load()
        except Exception as exc:  # any error on import: reported, the others still load
            problems.append(f"{who}: cannot load entry point {ep.value!r}: "
                            f"{type(exc).__name__}: {exc}")
            continue
        if _register(pm, plugin, ep.name, problems, who):
            sources[ep.name] = source
    for name in extra_plugins:
        source = module_source(name)
        who = f"plugin {name!r} ({source})"
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            problems.append(f"{who}: cannot import: {type(exc).__name__}: {exc}")
            continue
        if _register(pm, module, name, problems, who):
            sources[name] = source
    known = sorted(n for n in vars(pm.hook) if getattr(pm.hook, n).has_spec())
    for hook_name, caller in sorted(vars(pm.hook).items()):
        if caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            problems.append(f"plugin {impl.plugin_name!r} "
                            f"({sources.get(impl.plugin_name, NOT_INSTALLED)}): implements "
                            f"unknown hook {hook_name!r}{closest(hook_name, known)}")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:  # the unknown hooks above, as pluggy sees them
        if not any("unknown hook" in p for p in problems):
            problems.append(str(exc))
    registry = build_registry(pm, problems)
    return PluginCheck(pm, sources, registry, problems)
