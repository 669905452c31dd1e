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
    "NOT_INSTALLED",
    "Source",
    "entry_point_source",
    "installed_entry_points",
    "load_entry_points",
    "module_source",
    "register_plugin",
    "unknown_hooks",
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


@dataclass(frozen=True)
class Source:
    """The installed package a plugin comes from."""

    package: str
    version: str

    def __str__(self) -> str:
        return f"{self.package} {self.version}"


NOT_INSTALLED = Source("(not installed)", "-")


def installed_entry_points() -> list[Any]:
    """The ``tempering`` entry points of the installed packages, by name."""
    import importlib.metadata

    return sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)


def entry_point_source(ep: Any) -> Source:
    """The package that advertises entry point ``ep``."""
    dist = getattr(ep, "dist", None)
    return Source(dist.metadata["Name"], dist.version) if dist is not None else NOT_INSTALLED


def module_source(module_name: str) -> Source:
    """The installed distribution that provides ``module_name``'s top-level package."""
    import importlib.metadata

    import tempering

    top = module_name.split(".")[0]
    if top == "tempering":
        return Source("tempering", tempering.__version__)
    for name in importlib.metadata.packages_distributions().get(top, []):
        try:
            return Source(name, importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            continue
    return NOT_INSTALLED


def register_plugin(pm: pluggy.PluginManager, plugin: Any, name: str,
                    problems: list[str] | None, who: str) -> bool:
    """Register ``plugin`` unless it already is; with ``problems``, a plugin pluggy refuses (a
    name taken, a hook argument the spec lacks) is reported there instead of raising."""
    if pm.is_registered(plugin):
        return False
    try:
        pm.register(plugin, name=name)
    except (ValueError, pluggy.PluginValidationError) as exc:
        if problems is None:
            raise
        problems.append(f"{who}: not registered: " + "; ".join(str(exc).splitlines()))
        return False
    return True


def load_entry_points(pm: pluggy.PluginManager,
                      problems: list[str] | None = None) -> dict[str, Source]:
    """pluggy's ``load_setuptools_entrypoints``, with a plugin that fails to import named with
    its package instead of a traceback from inside pluggy (with ``problems``: reported there,
    and the others still load). Returns the package of each plugin it registered."""
    sources: dict[str, Source] = {}
    for ep in installed_entry_points():
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        source = entry_point_source(ep)
        who = f"plugin {ep.name!r} ({source})"
        try:
            plugin = ep.load()
        except Exception as exc:  # any error on import
            error = f"{type(exc).__name__}: {exc}"
            if problems is None:
                raise ComponentError(f"{who} cannot be loaded from entry point {ep.value!r}: "
                                     f"{error}; fix or uninstall that package") from exc
            problems.append(f"{who}: cannot load entry point {ep.value!r}: {error}")
            continue
        if register_plugin(pm, plugin, ep.name, problems, who):
            sources[ep.name] = source
    return sources


def unknown_hooks(pm: pluggy.PluginManager) -> list[tuple[str, str, str]]:
    """``(plugin, hook, hint)`` for every implementation of a hook tempering does not have (a
    misspelt one), the hint naming the closest real hooks."""
    known = [n for n in vars(pm.hook) if getattr(pm.hook, n).has_spec()]
    return [(impl.plugin_name, name, closest(name, known))
            for name, caller in sorted(vars(pm.hook).items()) if not caller.has_spec()
            for impl in caller.get_hookimpls()]


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
        load_entry_points(pm)
    for plugin in extra_plugins:
        if isinstance(plugin, str):
            module = _import_plugin(plugin, "listed in the recipe's plugins")
            if not pm.is_registered(module):  # also found through its entry point
                pm.register(module, name=plugin)
        elif not pm.is_registered(plugin):
            pm.register(plugin)
    for plugin, name, hint in unknown_hooks(pm)[:1]:  # a misspelt hook fails loudly, with a hint
        raise ComponentError(f"plugin {plugin!r} implements unknown hook {name!r}{hint}")
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
