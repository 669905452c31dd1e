"""The package's shape: no import cycles, built-in plugins use only the public API."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT


def _module_name(path: Path) -> str:
    if path.is_relative_to(ROOT / "plugins"):
        parts = ("tempering", "plugins", *path.relative_to(ROOT / "plugins").with_suffix("").parts)
    else:
        parts = ("tempering", *path.relative_to(ROOT / "framework").with_suffix("").parts)
    return ".".join(p for p in parts if p != "__init__")


def _imports(path: Path) -> set[str]:
    """Every tempering module a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tempering"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tempering"))
    return found


def _graph() -> dict[str, set[str]]:
    files = [*(ROOT / "framework").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]
    return {_module_name(f): _imports(f) for f in files}


def test_no_import_cycle_among_tempering_modules() -> None:
    from tempering.plugin_manager import BUILTIN_PLUGINS

    graph = _graph()
    graph["tempering"] = set()  # the package root: its lazy names load on first use
    graph["tempering.plugin_manager"] |= set(BUILTIN_PLUGINS)  # imported by name at run time
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(node):] + [node]))
        if node in done or node not in graph:
            return
        for target in sorted(graph[node]):
            visit(target, path + [node])
        done.add(node)

    for module in sorted(graph):
        visit(module, [])


def test_built_in_plugins_import_only_the_public_api() -> None:
    for path in (ROOT / "plugins").rglob("*.py"):
        private = sorted(m for m in _imports(path) if m != "tempering")
        assert not private, f"{path.name} imports {private}; import from tempering instead"


def test_the_encoder_builds_no_registry_of_its_own(tiny_tokenizer) -> None:
    """Names are looked up in the caller's registry; without one they are a clear error."""
    import pytest

    from tempering.chat.encoding import ConversationEncoder
    from tempering.chat.templates import TemplateError
    from tests.conftest import REGISTRY

    with pytest.raises(TemplateError, match="chat_template 'chatml' is a registered name"):
        ConversationEncoder(tiny_tokenizer, chat_template="chatml", masking=REGISTRY.get(
            "masking", "all_assistant"))
    with pytest.raises(TemplateError, match="masking 'all_assistant' is a registered name"):
        ConversationEncoder(tiny_tokenizer, chat_template=REGISTRY.get("chat_template", "chatml"))
    encoder = ConversationEncoder(tiny_tokenizer, chat_template=REGISTRY.get(
        "chat_template", "chatml"), masking=REGISTRY.get("masking", "all_assistant"))
    assert encoder.template.name == "chatml"


def test_tests_mirror_the_source_tree() -> None:
    """Each test folder is a framework subpackage or plugins/; each framework subpackage has one."""
    packages = {p.parent.name for p in (ROOT / "framework").glob("*/__init__.py")} - {"assets"}
    folders = {p.parent.name for p in (ROOT / "tests").glob("*/__init__.py")}
    assert folders <= packages | {"plugins"}, folders - packages
    assert packages <= folders, packages - folders
    assert not (ROOT / "framework" / "assets_build.py").exists()  # build tools live in tools/
