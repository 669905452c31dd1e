"""Reads an offline W&B run's ``run-*.wandb`` record log (no reader ships with wandb 0.31).

The file is a 7-byte header (":W&B", 2 magic bytes, version) followed by LevelDB-style log
blocks of 32 KiB; each chunk has a 7-byte header (crc32, little-endian length, type:
1 full, 2 first, 3 middle, 4 last) and a piece of a serialized ``Record`` protobuf.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

_BLOCK = 32 * 1024


def records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B record log"
    out, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def _finished(log: Path, wait_s: float = 20.0) -> list[Any]:
    """The log's records once W&B's service has written its last one (``exit``): the run's
    ``finish()`` can return before the service process is done writing the file."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        try:
            found = records(log)
        except Exception:  # a record the service is still writing
            if time.monotonic() > deadline:
                raise
            found = []
        if (found and found[-1].WhichOneof("record_type") == "exit") or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def read_run(run_dir: Path) -> dict[str, Any]:
    """``{"history": [{key: value}], "config": {key: value}, "summary": {key: value}}``."""
    log = next(run_dir.glob("run-*.wandb"))
    history, config, summary = [], {}, {}
    for record in _finished(log):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                            for i in record.history.item})
        elif kind == "config":
            for item in record.config.update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return {"history": history, "config": config, "summary": summary}
