"""Crash-safe stage outputs: records appended a chunk at a time, finalised atomically.

A stage that produces records (generate, score, eval) works through its input in fixed chunks.
Each rank appends the records of a chunk to its own ``part-R.jsonl`` and then an end line for
that chunk, and syncs the file. A process killed at any moment (SIGKILL included) leaves whole
chunks followed, at worst, by a torn tail; reopening cuts the tail and the stage goes on with
the chunks no part file holds. Chunk contents and seeds depend only on the chunk's index, so
the records are the same however often the stage was interrupted or however many ranks shared
it. When every chunk is there, :func:`finalise` writes ``samples.jsonl`` (renamed into place),
the same records as a ``datasets`` dataset in ``dataset/``, and only then the stage's
``summary.json``, which is what marks the stage finished.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = ["ChunkLog", "done_chunks", "gather", "finalise", "read_samples", "write_atomic"]

_END = "__chunk_end__"


class ChunkLog:
    """One rank's append-only record file.

    Args:
        path: the part file (created if missing; a torn tail is cut when it is opened).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        whole, good = _read_part(path)
        self.chunks = set(whole)
        if path.exists() and path.stat().st_size != good:
            with path.open("r+b") as f:  # drop the chunk a kill interrupted
                f.truncate(good)

    def append(self, chunk: int, records: Iterable[dict[str, Any]]) -> None:
        """Write one whole chunk, then its end line, then sync."""
        lines = [json.dumps({"chunk": chunk, **r}, ensure_ascii=False) for r in records]
        lines.append(json.dumps({_END: chunk}))
        with self.path.open("a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.chunks.add(chunk)


def _read_part(path: Path) -> tuple[dict[int, list[dict[str, Any]]], int]:
    """The whole chunks of a part file (their records) and the byte length of that whole
    prefix; whatever follows the last end line is a chunk a kill interrupted."""
    if not path.exists():
        return {}, 0
    whole: dict[int, list[dict[str, Any]]] = {}
    pending: dict[int, list[dict[str, Any]]] = {}
    good = offset = 0
    with path.open("rb") as f:
        for raw in f:
            offset += len(raw)
            if not raw.endswith(b"\n"):
                break  # a torn last line
            try:
                line = json.loads(raw)
            except ValueError:
                break
            if _END in line:
                c = int(line[_END])
                whole[c] = pending.pop(c, [])
                good = offset
            else:
                pending.setdefault(int(line.pop("chunk")), []).append(line)
    return whole, good


def _parts(folder: Path) -> list[Path]:
    return sorted(folder.glob("part-*.jsonl"))


def done_chunks(folder: Path) -> set[int]:
    """The chunks some part file in ``folder`` holds whole."""
    return set().union(*(_read_part(p)[0] for p in _parts(folder)))


def gather(folder: Path, chunks: int) -> list[dict[str, Any]]:
    """Every record of chunks ``0..chunks-1`` from all part files, in chunk order, each chunk
    once (a chunk two runs both finished is taken from the first file that has it).

    Raises:
        RuntimeError: a chunk is missing (the stage is not complete).
    """
    found: dict[int, list[dict[str, Any]]] = {}
    for part in _parts(folder):
        for c, records in _read_part(part)[0].items():
            found.setdefault(c, records)
    missing = [c for c in range(chunks) if c not in found]
    if missing:
        raise RuntimeError(f"{folder}: chunks {missing[:5]} of {chunks} were never written")
    return [r for c in range(chunks) for r in found[c]]


def write_atomic(path: Path, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write ``path`` through a temporary file renamed into place (never half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open(mode, encoding=None if "b" in mode else "utf-8") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _jsonl(records: list[dict[str, Any]]) -> Callable[[Any], None]:
    def write(f: Any) -> None:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")

    return write


def finalise(folder: Path, records: list[dict[str, Any]], summary: dict[str, Any],
             extra: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """``samples.jsonl`` and ``dataset/`` from ``records`` (plus any ``extra`` JSONL files),
    then ``summary.json`` with ``complete: true``; the part files are removed last."""
    import datasets

    write_atomic(folder / "samples.jsonl", _jsonl(records))
    for name, rows in (extra or {}).items():
        write_atomic(folder / name, _jsonl(rows))
    tmp, target = folder / "dataset.tmp", folder / "dataset"
    shutil.rmtree(tmp, ignore_errors=True)
    # Nested fields stay nested: a key some messages (or scores) lack is None in the others.
    datasets.Dataset.from_list(records).save_to_disk(str(tmp))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    summary = {**summary, "complete": True, "samples_file": str(folder / "samples.jsonl"),
               "dataset": str(target)}
    write_atomic(folder / "summary.json", lambda f: f.write(json.dumps(summary, indent=2) + "\n"))
    for part in _parts(folder):
        part.unlink()
    return summary


def read_samples(path: Path) -> list[dict[str, Any]]:
    """The records of a finished stage's JSONL output."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
