"""examples/tempering-example-plugin, as a user gets it: pip-installed (into a folder of its own
on the path), found through its entry point, and its own tests passing with the pytest kit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tempering-example-plugin"


@pytest.mark.slow
def test_the_example_plugin_installs_lists_checks_and_passes_its_own_tests(tmp_path):
    import shutil

    # a copy: building writes build/ and *.egg-info next to the sources
    source = shutil.copytree(EXAMPLE, tmp_path / "example", ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__"))
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(source)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "disabled"}

    def run(*args: str, cwd: Path = tmp_path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                              cwd=cwd, timeout=600)

    listing = run("-m", "tempering.cli", "plugins")
    assert listing.returncode == 0, listing.stderr
    for name in ("example_alpaca", "example_last_two", "example_focal", "example_echo",
                 "example_length", "example_min_words", "example_reverse"):
        line = next(x for x in listing.stdout.splitlines() if x.split()[:1] == [name])
        assert "tempering-example-plugin 0.1.0" in line, line
    check = run("-m", "tempering.cli", "plugins", "--check")
    assert check.returncode == 0 and "(1 not built in): no problems" in check.stdout
    tests = run("-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=source)
    assert tests.returncode == 0 and "6 passed" in tests.stdout, tests.stdout[-3000:]
