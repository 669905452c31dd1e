"""docs/first-plugin.md, followed as written: its files written, its commands run in order in an
empty folder. The one change: `pip install X` installs into a folder of the test's own
(`--target`, no network), so the suite's environment stays as it was."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "first-plugin.md"
BLOCK = re.compile(r"^```(\w+)(?: file=(\S+))?\n(.*?)^```$", re.S | re.M)


def blocks() -> list[tuple[str, str | None, str]]:
    return [(m.group(1), m.group(2), m.group(3)) for m in BLOCK.finditer(GUIDE.read_text())]


def test_the_guide_has_files_and_commands():
    found = blocks()
    assert {lang for lang, _, _ in found} >= {"bash", "python", "toml", "yaml"}
    assert sum(1 for _, name, _ in found if name) == 5


@pytest.mark.slow
def test_a_newcomer_following_the_guide_gets_what_it_says(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "disabled",
           "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
                                         f"{os.environ.get('PATH', '')}"}
    pip = (f"{sys.executable} -m pip install --quiet --no-deps --no-build-isolation "
           f"--target {site}")
    outputs = []
    for lang, name, body in blocks():
        if name:
            path = tmp_path / name
            assert path.parent.is_dir(), f"{name}: the guide writes it before making its folder"
            path.write_text(body)
        elif lang == "bash":
            script = body.replace("pip install", pip)
            proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path,
                                  env=env, capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, (script, proc.stdout[-3000:], proc.stderr[-3000:])
            outputs.append(proc.stdout)
    said = "\n".join(outputs)
    assert "18 plugins loaded (1 not built in): no problems" in said
    listed = next(line for line in said.splitlines() if line.split()[:1] == ["longest_answer"])
    assert listed.split()[1:4] == ["longest", "my-tempering-plugin", "0.1.0"], listed
    assert re.search(r"\b2 passed\b", said)
    assert "=== my-recipe: 20 steps" in said
    assert (tmp_path / "runs" / "my-recipe" / "final" / "model.safetensors").exists()
