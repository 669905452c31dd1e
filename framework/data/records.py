"""Records to conversations: the checks every record format shares.

The formats themselves (alpaca, ShareGPT, ...) are plugins (:class:`tempering.RecordFormat`); this
module looks them up in the run's registry, then checks roles and assistant content, and raises
:class:`BadRecordError` (with the kind of problem and the field) for a record it cannot use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BadRecordError", "ROLES", "detect_format", "to_messages", "validate"]

ROLES = ("system", "user", "assistant", "tool")


class BadRecordError(ValueError):
    """A record that cannot be used; ``kind`` names the problem for the run summary.

    Attributes:
        kind: one of ``malformed_json``, ``bad_encoding``, ``missing_field``, ``unknown_role``,
            ``empty_assistant``, ``no_assistant``, ``no_messages``, ``bad_type``, ``template_error``,
            ``too_long``, ``no_supervised_tokens``, ``tool_calls_not_rendered``,
            ``reasoning_not_rendered``.
        field: the offending field (key path inside the record), if any.
    """

    def __init__(self, kind: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.field = field


def detect_format(record: dict[str, Any], registry: Any) -> str:
    """The first registered record format (in registration order) whose ``detect`` accepts
    the record's keys."""
    detectable = {n: f for n, f in registry.components["record_format"].items() if f.detect}
    for name, fmt in detectable.items():
        if fmt.detect(record):
            return name
    raise BadRecordError(
        "missing_field",
        f"cannot tell the record's format from its keys {sorted(record)}; the detectable "
        f"formats are {', '.join(detectable)} (or set the source's format)",
    )


def _field(where: Any, key: str) -> str:
    """The record key path of a message's role or content. ``where`` is the message's path
    (``messages[2]``: its ``.role`` / ``.content``), a record field (alpaca: the field itself),
    or a ``(role_path, content_path)`` pair."""
    if isinstance(where, tuple):
        return where[0] if key == "role" else where[1]
    return f"{where}.{key}" if where.endswith("]") else where


def validate(messages: list[dict[str, Any]], where: list[Any] | None = None) -> list[dict[str, Any]]:
    """Check roles and assistant content; returns ``messages`` or raises BadRecordError.

    A conversation without an assistant message passes (a prompt to answer); reading training
    data refuses it (:func:`tempering.data.sources.load_conversations`).

    Args:
        messages: the converted messages.
        where: per message, its path in the raw record (for the ``field`` of errors).
    """
    where = where or [f"messages[{i}]" for i in range(len(messages))]
    if not messages:
        raise BadRecordError("no_messages", "the conversation has no messages")
    for i, m in enumerate(messages):
        if m["role"] not in ROLES:
            raise BadRecordError("unknown_role", f"message {i} has role {m['role']!r}; known: "
                                 f"{', '.join(ROLES)}", _field(where[i], "role"))
        if m["role"] == "assistant" and not m["content"].strip() and not m.get("tool_calls"):
            raise BadRecordError("empty_assistant", f"message {i} (assistant) is empty",
                                 _field(where[i], "content"))
    return messages


def to_messages(
    record: dict[str, Any], fmt: str = "auto", *, registry: Any,
    system_prompt: str | None = None, options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Convert one record with the registered format ``fmt`` (or ``auto``) to checked messages.

    Args:
        record: the raw record, with the canonical field names (after field mapping).
        fmt: a registered record format, or ``auto`` to detect it from the record's keys.
        registry: the run's component registry.
        system_prompt: prepended as a system message when the conversation has none.
        options: the source's format options, passed to the format's ``convert``.
    """
    if not isinstance(record, dict):
        raise BadRecordError("bad_type", f"a record must be a JSON object, got {type(record).__name__}")
    if fmt == "auto":
        fmt = detect_format(record, registry)
    converted = registry.get("record_format", fmt).convert(record, **(options or {}))
    messages, where = converted if isinstance(converted, tuple) else (converted, None)
    messages, where = list(messages), list(where or [f"messages[{i}]" for i in range(len(messages))])
    if system_prompt and (not messages or messages[0]["role"] != "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
        where.insert(0, "system_prompt")
    return validate(messages, where)
