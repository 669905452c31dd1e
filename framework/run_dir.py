"""The run directory belongs to one run: a new run never mixes with an old one.

A run directory that already holds a run (a checkpoint, a final model, a summary) is either
resumed (``train.resume_from: last``: its own latest checkpoint, and its W&B run continues),
started over (``train.overwrite: true`` deletes it first), or refused with one line that says
both. Only the launching process (rank 0) decides; ranks started later find its files there.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from tempering.recipe import Recipe, RecipeError

__all__ = ["prepare_run_dir", "wandb_run_id"]

_RUN_FILES = ("checkpoints", "final", "summary.json")
_WANDB_ID = "wandb_run_id"


def _is_launcher() -> bool:
    return all(int(os.environ.get(k, "0") or 0) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def _holds_a_run(output_dir: Path) -> list[str]:
    found = []
    for name in _RUN_FILES:
        path = output_dir / name
        if path.is_file() or (path.is_dir() and any(path.iterdir())):
            found.append(name)
    return found


def prepare_run_dir(recipe: Recipe, output_dir: Path) -> None:
    """Refuse, clear or keep ``output_dir`` as the recipe says (rank 0 only)."""
    if not _is_launcher():
        return
    found = _holds_a_run(output_dir)
    if not found or recipe.train.resume_from:
        return
    if recipe.train.overwrite:
        shutil.rmtree(output_dir)
        return
    raise RecipeError(
        f"train.output_dir {output_dir} already holds a run ({', '.join(found)}): continue it "
        "with train.resume_from=last, start over with train.overwrite=true (deletes it), or set "
        "another train.output_dir")


def wandb_run_id(output_dir: Path, resuming: bool) -> str:
    """This run directory's W&B run id: kept when resuming, so the W&B run continues."""
    path = output_dir / _WANDB_ID
    if resuming and path.is_file():
        return path.read_text(encoding="utf-8").strip()
    run_id = uuid.uuid4().hex[:8]
    if _is_launcher():
        output_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(run_id + "\n", encoding="utf-8")
    return run_id
