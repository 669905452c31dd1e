"""The wheel carries the framework, the built-in plugins, the recipes and the bundled assets."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

from tests.conftest import ROOT


def test_wheel_install_runs_from_its_own_files(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    wheel = next((tmp_path / "dist").glob("tempering-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("tempering/cli.py", "tempering/plugins/chat_templates.py",
                     "tempering/recipes/sft-quickstart.yaml",
                     "tempering/assets/tiny-llama/tokenizer.json",
                     "tempering/assets/data/tasks_train.jsonl",
                     "tempering/assets/data/seed_tasks.jsonl",
                     "tempering/recipes/self-instruct-quickstart.yaml"):
        assert expected in names, expected
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "tempering = tempering.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                              "--target", str(target), str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    probe = ("import tempering, tempering.plugins.masking as m;"
             "from tempering.recipe import resolve_bundled, bundled_recipes;"
             "print(tempering.__file__, m.__file__, resolve_bundled('bundled:tiny-llama'),"
             " sorted(bundled_recipes()))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(str(target)) == 3 and "sft-quickstart" in out.stdout
