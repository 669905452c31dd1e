"""Tokenizing conversations with ``datasets.map``: batched, cached by fingerprint, ``num_proc``."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import tempering
from tempering.chat.encoding import ENCODER_FORMAT, ConversationEncoder
from tempering.chat.templates import TemplateError
from tempering.data.records import BadRecordError
from tempering.data.sources import SKIP_HINT, BadRecordLog, Conversation, DataError

__all__ = ["encode_rows", "encode_one", "tokenize_conversations", "auto_num_proc"]

_COLUMNS = ("input_ids", "labels", "length", "num_supervised", "stop_ids", "unterminated",
            "overflow_rows", "turns_dropped", "source", "error_kind", "error")


def _row(enc: Any, overflow_rows: int, turns_dropped: int = 0) -> dict[str, Any]:
    return {"input_ids": enc.input_ids, "labels": enc.labels, "length": len(enc.input_ids),
            "num_supervised": enc.num_supervised, "stop_ids": enc.stop_ids,
            "unterminated": len(enc.unterminated), "overflow_rows": overflow_rows,
            "turns_dropped": turns_dropped, "error_kind": "", "error": ""}


def encode_rows(encoder: ConversationEncoder, messages: list[dict[str, Any]], max_length: int,
                overflow: Any, overflow_options: dict[str, Any] | None = None
                ) -> list[dict[str, Any]]:
    """The examples of one conversation: one row, or, for a conversation over ``max_length``,
    the rows the overflow policy (a :class:`tempering.OverflowPolicy`) made of it (several for a
    policy that splits; ``overflow_rows`` on the first says how many). A conversation that
    cannot be used is one row with ``error_kind``."""
    try:
        enc = encoder.encode(messages)
        if len(enc.input_ids) <= max_length:
            if enc.num_supervised == 0:
                return [_bad("no_supervised_tokens", "no token is trained")]
            return [_row(enc, 0)]
        fitted = overflow.fit(encoder, messages, enc, max_length, **(overflow_options or {}))
        if fitted is None:
            return [_bad("too_long", f"{len(enc.input_ids)} tokens > max_length {max_length}")]
        fitted = fitted if isinstance(fitted, list) else [fitted]
        for f in fitted:
            if len(f.input_ids) > max_length:
                raise RuntimeError(f"overflow policy {overflow.name!r} returned "
                                   f"{len(f.input_ids)} tokens for max_length {max_length}")
        fitted = [f for f in fitted if f.num_supervised > 0]
        # Trained turns of the whole conversation that no example trains (an old turn
        # dropped, a turn that does not fit even alone): counted, never silently lost.
        lost = max(0, len(enc.spans) - sum(len(f.spans) for f in fitted))
        rows = [_row(f, len(fitted) if i == 0 else 0, lost if i == 0 else 0)
                for i, f in enumerate(fitted)]
        return rows or [_bad("no_supervised_tokens", "no token is trained")]
    except BadRecordError as exc:
        return [_bad(exc.kind, str(exc))]
    except TemplateError as exc:
        return [_bad(getattr(exc, "kind", "template_error"), str(exc))]
    except ValueError as exc:
        return [_bad("no_supervised_tokens", str(exc))]


def encode_one(encoder: ConversationEncoder, messages: list[dict[str, Any]], max_length: int,
               overflow: Any, overflow_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The first row :func:`encode_rows` makes of one conversation."""
    return encode_rows(encoder, messages, max_length, overflow, overflow_options)[0]


def _bad(kind: str, message: str) -> dict[str, Any]:
    return {"input_ids": [], "labels": [], "length": 0, "num_supervised": 0, "stop_ids": [],
            "unterminated": 0, "overflow_rows": 0, "turns_dropped": 0, "error_kind": kind,
            "error": message}


def _encode_batch(batch: dict[str, list], encoder: ConversationEncoder, max_length: int,
                  overflow: Any, overflow_options: dict[str, Any]) -> dict[str, list]:
    out: dict[str, list] = {c: [] for c in _COLUMNS}
    for source, messages in zip(batch["source"], batch["messages"], strict=True):
        for row in encode_rows(encoder, json.loads(messages), max_length, overflow,
                               overflow_options):
            row["source"] = source
            for c in _COLUMNS:
                out[c].append(row[c])
    return out


PER_PROCESS = 2000  # conversations a tokenizing process is worth starting for


def auto_num_proc(conversations: int) -> int:
    """``data.num_proc: null``: one process per ``PER_PROCESS`` conversations, at most one per
    core this process may run on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, conversations // PER_PROCESS))


def _fingerprint(encoder: ConversationEncoder, conversations: list[Conversation],
                 max_length: int, overflow: list[Any]) -> str:
    h = hashlib.sha256()
    tok = encoder.tokenizer
    h.update(tok.backend_tokenizer.to_str().encode() if hasattr(tok, "backend_tokenizer") else b"")
    # The code that made the labels is part of the key: an upgrade that changes a mask never
    # reads stale labels back from the shared cache.
    h.update(json.dumps([tempering.__version__, ENCODER_FORMAT, encoder.template.jinja,
                         encoder.template.kwargs, encoder.masking.name, encoder.masking_options,
                         encoder.train_on_eot,
                         encoder.append_stop_token, max_length, overflow, tok.bos_token,
                         tok.eos_token], sort_keys=True, default=str).encode())
    for conv in conversations:
        h.update(json.dumps(conv.messages, sort_keys=True).encode())
    return h.hexdigest()[:24]


def tokenize_conversations(
    conversations: list[Conversation], encoder: ConversationEncoder, *, max_length: int,
    overflow: Any, on_bad_record: str, log: BadRecordLog, num_proc: int = 1,
    cache_dir: str | None = None, desc: str = "Tokenizing", overflow_options: dict[str, Any] | None = None,
) -> Any:
    """Tokenize into a ``datasets.Dataset`` (input_ids, labels, length, num_supervised).

    The result is cached under ``cache_dir`` by a fingerprint of the tokenizer, template,
    masking, limits and conversations, so a second run with the same inputs reads it back.
    """
    import datasets

    options = dict(overflow_options or {})
    fingerprint = _fingerprint(encoder, conversations, max_length, [overflow.name, options])
    raw = datasets.Dataset.from_dict({
        # JSON text, not Arrow structs: nested fields (tool-call arguments) of different shapes
        # would otherwise be merged into one schema and padded with nulls.
        "messages": [json.dumps(c.messages) for c in conversations],
        "source": list(range(len(conversations))),  # a conversation may become several rows
    })
    cache = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "tempering"
    cache.mkdir(parents=True, exist_ok=True)
    encoded = raw.map(
        _encode_batch, batched=True, batch_size=256, num_proc=num_proc if num_proc > 1 else None,
        fn_kwargs={"encoder": encoder, "max_length": max_length, "overflow": overflow,
                   "overflow_options": options},
        remove_columns=["messages", "source"], new_fingerprint=fingerprint,
        cache_file_name=str(cache / f"{fingerprint}.arrow"), desc=desc,
    )
    # Where each record came from is attached fresh, never read back from the cache: the same
    # conversations copied to another file are cached once but reported under the file read.
    if "origin" in encoded.column_names:  # a cache written before origins were kept out of it
        encoded = encoded.remove_columns(["origin"])
    encoded = encoded.add_column("origin", [conversations[i].origin for i in encoded["source"][:]])
    kinds = encoded["error_kind"][:]
    bad = [i for i, k in enumerate(kinds) if k]
    if bad:
        errors = encoded.select(bad)
        for origin, kind, message in zip(errors["origin"][:], errors["error_kind"][:], errors["error"][:],
                                         strict=True):
            if on_bad_record == "error" and kind != "too_long":
                raise DataError(f"{origin}: {message} {SKIP_HINT}")
            log.add(kind)
        encoded = encoded.select([i for i, k in enumerate(kinds) if not k])
    return encoded.remove_columns(["error_kind", "error"])
