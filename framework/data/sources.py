"""Reading recipe data sources into conversations, counting or refusing bad records."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tempering.data.records import BadRecordError
from tempering.recipe import DataSource, resolve_bundled

__all__ = ["DataError", "SKIP_HINT", "BadRecordLog", "Conversation", "read_source",
           "load_conversations"]


class DataError(ValueError):
    """A bad record with ``on_bad_record: error``: names the file, the record and the field."""


SKIP_HINT = "(set data.on_bad_record: skip to skip and count such records)"


@dataclass
class BadRecordLog:
    """Skipped records by kind, for the run summary and W&B."""

    counts: Counter = field(default_factory=Counter)

    def add(self, kind: str) -> None:
        self.counts[kind] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class Conversation:
    messages: list[dict[str, Any]]
    origin: str  # "file:line" or "dataset[split]#index"
    tags: dict[str, Any] = field(default_factory=dict)  # a mixture's task and split


def _where(origin: str, exc: BadRecordError) -> str:
    return f"{origin}, field {exc.field}" if exc.field else origin


def _decode(data: bytes) -> str | BadRecordError:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadRecordError("bad_encoding", f"not valid UTF-8 (byte {exc.start} of the line: "
                              f"{data[exc.start:exc.start + 1]!r})")


def _iter_json_array(path: Path, raw: bytes) -> Iterator[tuple[str, Any]]:
    """A JSON array file: records numbered from 1, like JSONL lines."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        yield f"{path}:{line}", BadRecordError("bad_encoding", "not valid UTF-8 (byte "
                                               f"{raw[exc.start:exc.start + 1]!r})")
        return
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        yield f"{path}:{exc.lineno}", BadRecordError("malformed_json", f"invalid JSON: {exc.msg}")
        return
    for i, record in enumerate(records, start=1):
        yield f"{path} record {i}", record


def _iter_json_file(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(origin, record)``; a bad line yields ``(origin, BadRecordError)``.

    JSONL is split on ``\\n`` only (``\\r\\n`` tolerated): JSON strings may hold U+2028, U+2029
    and U+0085 raw, which ``str.splitlines`` would split on. Each line is decoded on its own, so
    one line that is not UTF-8 is one bad record; a leading byte-order mark is accepted.
    """
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if path.suffix == ".json" and raw.lstrip().startswith(b"["):
        yield from _iter_json_array(path, raw)
        return
    for lineno, data in enumerate(raw.split(b"\n"), start=1):
        line = _decode(data.removesuffix(b"\r"))
        if isinstance(line, BadRecordError):
            yield f"{path}:{lineno}", line
            continue
        if not line.strip():
            continue
        try:
            yield f"{path}:{lineno}", json.loads(line)
        except json.JSONDecodeError as exc:
            yield f"{path}:{lineno}", BadRecordError("malformed_json", f"invalid JSON: {exc.msg}")


def _iter_datasets(source: DataSource, location: str) -> Iterator[tuple[str, Any]]:
    import datasets

    if Path(location).is_dir():
        ds = datasets.load_from_disk(location)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[source.split]
    else:
        ds = datasets.load_dataset(location, source.subset, split=source.split)
    for i, record in enumerate(ds):
        yield f"{location}[{source.split}]#{i}", record


def read_source(source: DataSource) -> Iterator[tuple[str, Any]]:
    """Yield ``(origin, raw record)`` pairs of one source, field-mapped, up to max_records."""
    location = resolve_bundled(source.path)
    path = Path(location).expanduser()
    saved = path.is_dir() and any((path / f).exists() for f in ("dataset_info.json",
                                                                "dataset_dict.json", "state.json"))
    if not path.exists() and path.suffix in (".json", ".jsonl"):
        raise DataError(f"data source {source.path!r}: no such file")
    if path.is_file():
        records: Iterator[tuple[str, Any]] = _iter_json_file(path)
    elif path.is_dir() and not saved and any(path.glob("*.json*")):
        records = (r for p in sorted(path.glob("*.json*")) for r in _iter_json_file(p))
    elif saved or not (path.exists() or location.startswith((".", "/", "~"))):
        records = _iter_datasets(source, location)  # save_to_disk folder or a hub id
    else:
        raise DataError(f"data source {source.path!r}: not a JSON/JSONL file, a folder of them, "
                        "a saved dataset or a hub id")
    rename = {v: k for k, v in source.fields.items()}
    for n, (origin, record) in enumerate(records):
        if n < source.skip_records:
            continue
        if source.max_records is not None and n - source.skip_records >= source.max_records:
            break
        if rename and isinstance(record, dict):
            record = {rename.get(k, k): v for k, v in record.items()}
        yield origin, record


def _weighted(items: list[Conversation], weight: float, rng: random.Random) -> list[Conversation]:
    """Each record ``floor(weight)`` times plus a seeded ``frac(weight)`` sample of them."""
    whole, frac = int(math.floor(weight)), weight - math.floor(weight)
    out = items * whole
    if frac > 0:
        out += rng.sample(items, round(frac * len(items)))
    return out


def load_conversations(
    sources: list[DataSource], format_example: Any, registry: Any, *, on_bad_record: str,
    seed: int, log: BadRecordLog, require_assistant: bool = True,
) -> list[Conversation]:
    """Read and format every source (the ``format_example`` hook, with the run's registry of
    record formats) into conversations.

    Bad records raise :class:`DataError` (``on_bad_record: error``) or are counted in ``log``.
    With ``require_assistant`` (training data) a conversation without an assistant message is
    a bad record (``no_assistant``); prompts to answer need none.
    """
    rng = random.Random(seed)
    out: list[Conversation] = []
    for source in sources:
        if source.weight < 0:
            raise DataError(f"data source {source.path!r}: weight must be >= 0")
        items = []
        for origin, record in read_source(source):
            try:
                if isinstance(record, BadRecordError):
                    raise record
                messages = format_example(record=record, source=source, registry=registry)
                if messages is None:
                    raise DataError(f"data source {source.path!r}: no format_example plugin "
                                    f"converted a record of format {source.format.name!r}")
                if require_assistant and not any(m["role"] == "assistant" for m in messages):
                    raise BadRecordError("no_assistant", "the conversation has no assistant "
                                         "message to train")
            except BadRecordError as exc:
                if on_bad_record == "error":
                    raise DataError(f"{_where(origin, exc)}: {exc} {SKIP_HINT}") from None
                log.add(exc.kind)
                continue
            items.append(Conversation(messages, origin))
        out += _weighted(items, source.weight, rng)
    return out
