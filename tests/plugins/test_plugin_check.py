"""``tempering plugins --check``: every installed plugin loaded, every problem reported at once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tempering.cli import main

MASKING = "from tempering import MaskingStrategy, hookimpl\n"


def _module(folder: Path, name: str, body: str) -> None:
    (folder / f"{name}.py").write_text(MASKING + textwrap.dedent(body))


def _installed(folder: Path, dist: str, version: str, entry_points: dict[str, str]) -> None:
    """A distribution as pip would leave it: a dist-info folder with its entry points."""
    info = folder / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(
        "[tempering]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))


def _plugins(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder),
                                                         os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "tempering.cli", "plugins", *args],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """Two installed plugin packages (three entry points) and two plugin modules on the path;
    five problems among the installed ones, one in each module."""
    _module(tmp_path, "acme_masks", """
        def _mask(messages):
            return [m["role"] == "assistant" for m in messages]

        @hookimpl
        def register_masking_strategies():
            return [MaskingStrategy("all_assistant", _mask),   # a built-in's name
                    MaskingStrategy("acme_last", _mask)]

        @hookimpl
        def register_chat_template():  # misspelt: register_chat_templates
            return []
        """)
    _module(tmp_path, "acme_broken", "import no_such_module_here\n")  # fails on import
    _module(tmp_path, "beta_masks", """
        @hookimpl
        def register_masking_strategies():
            return [MaskingStrategy("acme_last", lambda m: [True] * len(m)), "not a strategy"]
        """)
    _module(tmp_path, "loose_plugin", """
        @hookimpl
        def register_objectivs():  # misspelt: register_objectives
            return []
        """)
    _module(tmp_path, "delta_args", """
        @hookimpl
        def load_tokenizer(cfg):  # the hook's argument is `config`
            return None
        """)
    _installed(tmp_path, "acme-tempering", "1.2.0", {"acme": "acme_masks",
                                                      "acme_broken": "acme_broken"})
    _installed(tmp_path, "beta-tempering", "0.3", {"beta": "beta_masks"})
    return tmp_path


def test_check_reports_every_problem_with_its_package_and_exits_1(site):
    proc = _plugins(site, "--check", "--plugin", "loose_plugin", "--plugin", "delta_args")
    assert proc.returncode == 1, proc.stderr
    out = proc.stdout
    assert "7 problems" in out.splitlines()[0]  # not stopped at the first
    expected = [
        "plugin 'acme_broken' (acme-tempering 1.2.0): cannot load entry point 'acme_broken': "
        "ModuleNotFoundError",
        "plugin 'acme' (acme-tempering 1.2.0): implements unknown hook 'register_chat_template'; "
        "did you mean 'register_chat_templates'",
        "plugin 'loose_plugin' ((not installed) -): implements unknown hook "
        "'register_objectivs'; did you mean 'register_objectives'",
        "masking 'all_assistant' is registered twice: by plugin 'tempering.plugins.masking' and "
        "by plugin 'acme'",
        "masking 'acme_last' is registered twice: by plugin 'acme' and by plugin 'beta'",
        "plugin 'beta' returned str from register_masking_strategies; expected MaskingStrategy",
        "plugin 'delta_args' ((not installed) -): not registered: Plugin 'delta_args' for hook "
        "'load_tokenizer'; hookimpl definition: load_tokenizer(cfg); Argument(s) {'cfg'} are "
        "declared in the hookimpl but can not be found in the hookspec",
    ]
    for line in expected:
        assert line in out, (line, out)
    assert "Traceback" not in proc.stderr


def test_listing_names_each_components_package_and_stops_at_a_conflict(site, tmp_path):
    proc = _plugins(site)  # as a run: the first problem in one line, pointing at --check
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "tempering: error: plugin 'acme_broken' (acme-tempering 1.2.0) cannot be loaded from "
        "entry point 'acme_broken': ModuleNotFoundError: No module named 'no_such_module_here'; "
        "fix or uninstall that package (`tempering plugins --check` lists every problem)")
    (site / "acme_broken.py").write_text("")  # the next problem
    proc = _plugins(site)
    assert proc.returncode == 2
    assert "plugin 'acme' implements unknown hook 'register_chat_template'" in proc.stderr
    clean = tmp_path / "clean"
    clean.mkdir()
    _module(clean, "gamma_masks", """
        @hookimpl
        def register_masking_strategies():
            return [MaskingStrategy("gamma_every", lambda m: [True] * len(m),
                                    description="gamma's")]
        """)
    _installed(clean, "gamma-tempering", "2.0.1", {"gamma": "gamma_masks"})
    proc = _plugins(clean)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if "gamma_every" in x)
    assert "gamma" in line and "gamma-tempering 2.0.1" in line and "gamma's" in line
    assert _plugins(clean, "--check").stdout.startswith(
        "18 plugins loaded (1 not built in): no problems")


def test_check_of_the_built_ins_alone_is_clean(capsys):
    assert main(["plugins", "--check"]) == 0
    assert "no problems" in capsys.readouterr().out
