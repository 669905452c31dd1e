"""Builds a fresh pluggy PluginManager per run and the component registry from it."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from tempering import hookspecs
from tempering.components import KINDS, ComponentKind

__all__ = [
    "BUILTIN_PLUGINS",
    "ENTRY_POINT_GROUP",
    "ComponentError",
    "Registry",
    "build_plugin_manager",
    "build_registry",
    "closest",
    "entry_point_package",
    "installed_entry_points",
]

ENTRY_POINT_GROUP = "tempering"

# Built-ins are registered exactly as a third-party plugin would be: by module name.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "tempering.plugins.chat_templates",
    "tempering.plugins.masking",
    "tempering.plugins.objectives",
    "tempering.plugins.record_formats",
    "tempering.plugins.overflow",
    "tempering.plugins.metrics",
    "tempering.plugins.generators",
    "tempering.plugins.scorers",
    "tempering.plugins.sample_filters",
    "tempering.plugins.instruction_filters",
    "tempering.plugins.evolution",
    "tempering.plugins.task_formatters",
    "tempering.plugins.tasks",
    "tempering.plugins.tasks_language",
    "tempering.plugins.loss",
    "tempering.plugins.models",
    "tempering.plugins.callbacks",
)

class ComponentError(ValueError):
    """A component could not be registered or found."""


def closest(name: str, choices: Iterable[str]) -> str:
    """Return a "did you mean" suffix for an unknown ``name`` (empty when nothing is close)."""
    choices = sorted(choices)
    near = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    if near:
        return f"; did you mean {' or '.join(repr(n) for n in near)}?"
    return f"; valid names: {', '.join(choices)}" if choices else ""


def _import_plugin(name: str, where: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ComponentError(f"cannot import plugin module {name!r} ({where}): {exc}") from exc


def installed_entry_points() -> list[Any]:
    """The ``tempering`` entry points of the installed packages, by name."""
    import importlib.metadata

    return sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)


def entry_point_package(ep: Any) -> str:
    """``name version`` of the package that advertises ``ep``."""
    dist = getattr(ep, "dist", None)
    return f"{dist.metadata['Name']} {dist.version}" if dist is not None else "(unknown package)"


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    """pluggy's ``load_setuptools_entrypoints``, with a plugin that fails to import named with
    its package instead of a traceback from inside pluggy."""
    for ep in installed_entry_points():
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            raise ComponentError(
                f"plugin {ep.name!r} ({entry_point_package(ep)}) cannot be loaded from entry "
                f"point {ep.value!r}: {type(exc).__name__}: {exc}; fix or uninstall that "
                "package") from exc
        pm.register(plugin, name=ep.name)


def build_plugin_manager(
    extra_plugins: Iterable[str | Any] = (), *, entry_points: bool = True
) -> pluggy.PluginManager:
    """Create a fresh PluginManager: built-ins, installed entry points, then ``extra_plugins``.

    Args:
        extra_plugins: module names (as a recipe's ``plugins:`` lists them) or plugin objects.
        entry_points: also load plugins advertised under the ``tempering`` entry-point group.
    """
    pm = pluggy.PluginManager("tempering")
    pm.add_hookspecs(hookspecs)
    for name in BUILTIN_PLUGINS:
        pm.register(_import_plugin(name, "built-in"), name=name)
    if entry_points:
        _load_entry_points(pm)
    for plugin in extra_plugins:
        if isinstance(plugin, str):
            module = _import_plugin(plugin, "listed in the recipe's plugins")
            if not pm.is_registered(module):  # also found through its entry point
                pm.register(module, name=plugin)
        elif not pm.is_registered(plugin):
            pm.register(plugin)
    known = [n for n in vars(pm.hook) if getattr(pm.hook, n).has_spec()]
    for name, caller in vars(pm.hook).items():  # a misspelt hook fails loudly, with a hint
        if not caller.has_spec() and caller.get_hookimpls():
            plugin = caller.get_hookimpls()[0].plugin_name
            raise ComponentError(f"plugin {plugin!r} implements unknown hook {name!r}"
                                 f"{closest(name, known)}")
    pm.check_pending()
    return pm


@dataclass
class Registry:
    """Registered components by kind and name, with the plugin that provided each."""

    components: dict[str, dict[str, Any]] = field(default_factory=dict)
    providers: dict[str, dict[str, str]] = field(default_factory=dict)

    def get(self, kind: str, name: str) -> Any:
        """Return the component ``name`` of ``kind`` or raise a ComponentError with suggestions."""
        found = self.components.get(kind, {})
        if name not in found:
            raise ComponentError(f"unknown {kind} {name!r}{closest(name, found)}")
        return found[name]

    def names(self, kind: str) -> list[str]:
        return sorted(self.components.get(kind, {}))


def _called(pm: pluggy.PluginManager, kind: ComponentKind) -> list[tuple[str, list[Any]]]:
    """Call ``kind``'s registration hook through ``pm.hook`` (so wrappers and tracing see it);
    each implementation's list with its plugin's name, in registration order."""
    caller = getattr(pm.hook, kind.hook)
    called = [i for i in reversed(caller.get_hookimpls()) if not (i.hookwrapper or i.wrapper)]
    results = caller()  # pluggy calls implementations in reverse order, skipping None
    if len(results) != len(called):
        raise ComponentError(
            f"{kind.hook}: {len(called)} plugins implement it but {len(results)} lists came back; "
            f"each implementation returns a list of {kind.contract.__name__} (an empty list for "
            "none), and a wrapper may change the lists but not add or drop one")
    return [(impl.plugin_name, list(found or [])) for impl, found in
            reversed(list(zip(called, results, strict=True)))]


def build_registry(pm: pluggy.PluginManager, problems: list[str] | None = None) -> Registry:
    """Call every kind's registration hook and index the components; duplicates name both
    plugins. The kinds come from :data:`tempering.components.KINDS`.

    Args:
        pm: the plugin manager.
        problems: when given, every problem is appended to it and the component left out,
            instead of raising a :class:`ComponentError` at the first (``plugins --check``).
    """
    def fail(message: str) -> None:
        if problems is None:
            raise ComponentError(message)
        problems.append(message)

    registry = Registry()
    for kind in KINDS:
        found: dict[str, Any] = {}
        providers: dict[str, str] = {}
        try:
            called = _called(pm, kind)
        except ComponentError as exc:
            fail(str(exc))
            called = []
        except Exception as exc:  # a plugin's hook raised
            fail(f"{kind.hook}: a plugin's implementation raised {type(exc).__name__}: {exc}")
            called = []
        for plugin_name, components in called:
            for component in components:
                if not isinstance(component, kind.contract):
                    fail(f"plugin {plugin_name!r} returned {type(component).__name__} from "
                         f"{kind.hook}; expected {kind.contract.__name__}")
                elif component.name in found:
                    fail(f"{kind.name} {component.name!r} is registered twice: by plugin "
                         f"{providers[component.name]!r} and by plugin {plugin_name!r}")
                else:
                    found[component.name] = component
                    providers[component.name] = plugin_name
        registry.components[kind.name] = found
        registry.providers[kind.name] = providers
    return registry
