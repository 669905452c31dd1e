"""Record readers: alpaca, prompt/completion, OpenAI messages and ShareGPT -> messages.

Every reader returns OpenAI-style ``{"role", "content"[, "train"]}`` dicts (messages records also
keep ``tool_calls``, ``reasoning_content``, ``tool_call_id`` and ``name``) and raises
:class:`BadRecordError` (with the kind of problem and the field) for a record it cannot convert.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BadRecordError", "FORMATS", "ROLES", "detect_format", "to_messages", "validate"]

ROLES = ("system", "user", "assistant", "tool")
FORMATS = ("auto", "alpaca", "prompt_completion", "messages", "sharegpt")
_SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant",
    "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
    "tool": "tool", "function": "tool", "observation": "tool",
}


class BadRecordError(ValueError):
    """A record that cannot be used; ``kind`` names the problem for the run summary.

    Attributes:
        kind: one of ``malformed_json``, ``bad_encoding``, ``missing_field``, ``unknown_role``,
            ``empty_assistant``, ``no_assistant``, ``bad_type``, ``template_error``,
            ``too_long``, ``no_supervised_tokens``, ``tool_calls_not_rendered``,
            ``reasoning_not_rendered``.
        field: the offending field (key path inside the record), if any.
    """

    def __init__(self, kind: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.field = field


def _text(record: dict[str, Any], key: str, *, required: bool = True) -> str:
    if key not in record or record[key] is None:
        if required:
            raise BadRecordError("missing_field", f"missing field {key!r}", key)
        return ""
    value = record[key]
    if not isinstance(value, str):
        raise BadRecordError("bad_type", f"field {key!r} must be a string, got "
                             f"{type(value).__name__}", key)
    return value


def detect_format(record: dict[str, Any]) -> str:
    """Guess a record's format from its keys."""
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record:
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "prompt_completion"
    raise BadRecordError(
        "missing_field",
        f"cannot tell the record's format from its keys {sorted(record)}; expected messages, "
        "conversations, instruction/output or prompt/completion (or set the source's format)",
    )


def _alpaca(record: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    instruction = _text(record, "instruction")
    extra = _text(record, "input", required=False)
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return ([{"role": "user", "content": prompt},
             {"role": "assistant", "content": _text(record, "output")}], ["instruction", "output"])


def _prompt_completion(record: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    return ([{"role": "user", "content": _text(record, "prompt")},
             {"role": "assistant", "content": _text(record, "completion")}],
            ["prompt", "completion"])


def _message_list(record: dict[str, Any], key: str) -> list[Any]:
    value = record.get(key)
    if value is None:
        raise BadRecordError("missing_field", f"missing field {key!r}", key)
    if not isinstance(value, list):
        raise BadRecordError("bad_type", f"field {key!r} must be a list", key)
    return value


# Message fields kept as they are (templates render them): never silently dropped.
_KEPT_FIELDS = ("reasoning_content", "tool_call_id", "name")


def _tool_calls(m: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """An assistant message's ``tool_calls``, checked: each names its function."""
    calls = m.get("tool_calls")
    if calls is None:
        return []
    if not isinstance(calls, list):
        raise BadRecordError("bad_type", f"{where}.tool_calls must be a list", f"{where}.tool_calls")
    for j, call in enumerate(calls):
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BadRecordError("bad_type", f"{where}.tool_calls[{j}] must be an object with "
                                 "function.name (a string)", f"{where}.tool_calls[{j}]")
    return calls


def _messages(record: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    out = []
    for i, m in enumerate(_message_list(record, "messages")):
        if not isinstance(m, dict):
            raise BadRecordError("bad_type", f"messages[{i}] must be an object", f"messages[{i}]")
        if "role" not in m:
            raise BadRecordError("missing_field", f"messages[{i}] has no 'role'",
                                 f"messages[{i}].role")
        calls = _tool_calls(m, f"messages[{i}]")
        try:  # an assistant turn that only calls tools may have no content
            content = _text(m, "content", required=not calls)
        except BadRecordError as exc:
            raise BadRecordError(exc.kind, f"messages[{i}]: {exc}", f"messages[{i}].content"
                                 ) from None
        message: dict[str, Any] = {"role": m["role"], "content": content}
        if calls:
            message["tool_calls"] = calls
        for key in _KEPT_FIELDS:
            if m.get(key) is not None:
                if not isinstance(m[key], str):
                    raise BadRecordError("bad_type", f"messages[{i}].{key} must be a string",
                                         f"messages[{i}].{key}")
                message[key] = m[key]
        if "train" in m:
            message["train"] = bool(m["train"])
        out.append(message)
    return out, [f"messages[{i}]" for i in range(len(out))]


def _sharegpt(record: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    out = []
    for i, turn in enumerate(_message_list(record, "conversations")):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise BadRecordError("bad_type", f"{where} must be an object", where)
        speaker = turn.get("from")
        if speaker is None:
            raise BadRecordError("missing_field", f"{where} has no 'from'", f"{where}.from")
        role = _SHAREGPT_ROLES.get(str(speaker).lower())
        if role is None:
            raise BadRecordError("unknown_role", f"{where}.from is {speaker!r}; known: "
                                 f"{', '.join(sorted(_SHAREGPT_ROLES))}", f"{where}.from")
        try:
            content = _text(turn, "value")
        except BadRecordError as exc:
            raise BadRecordError(exc.kind, f"{where}: {exc}", f"{where}.value") from None
        out.append({"role": role, "content": content})
    return out, [f"conversations[{i}]" for i in range(len(out))]


_READERS = {
    "alpaca": _alpaca,
    "prompt_completion": _prompt_completion,
    "messages": _messages,
    "sharegpt": _sharegpt,
}


def _field(where: str, key: str) -> str:
    """The record key path of a message's role or content (``where`` is the message's path)."""
    if where.startswith("conversations["):
        return f"{where}.{'from' if key == 'role' else 'value'}"
    if where.startswith("messages["):
        return f"{where}.{key}"
    return where  # alpaca / prompt-completion: the record's own field


def validate(messages: list[dict[str, Any]], where: list[str] | None = None) -> list[dict[str, Any]]:
    """Check roles and assistant content; returns ``messages`` or raises BadRecordError.

    Args:
        messages: the converted messages.
        where: per message, its path in the raw record (for the ``field`` of errors).
    """
    where = where or [f"messages[{i}]" for i in range(len(messages))]
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRecordError("no_assistant", "the conversation has no assistant message")
    for i, m in enumerate(messages):
        if m["role"] not in ROLES:
            raise BadRecordError("unknown_role", f"message {i} has role {m['role']!r}; known: "
                                 f"{', '.join(ROLES)}", _field(where[i], "role"))
        if m["role"] == "assistant" and not m["content"].strip() and not m.get("tool_calls"):
            raise BadRecordError("empty_assistant", f"message {i} (assistant) is empty",
                                 _field(where[i], "content"))
    return messages


def to_messages(
    record: dict[str, Any], fmt: str = "auto", *, system_prompt: str | None = None
) -> list[dict[str, Any]]:
    """Convert one record of format ``fmt`` to validated messages.

    Args:
        record: the raw record, with the canonical field names (after field mapping).
        fmt: one of :data:`FORMATS`.
        system_prompt: prepended as a system message when the conversation has none.
    """
    if not isinstance(record, dict):
        raise BadRecordError("bad_type", f"a record must be a JSON object, got {type(record).__name__}")
    if fmt == "auto":
        fmt = detect_format(record)
    if fmt not in _READERS:
        raise ValueError(f"unknown data format {fmt!r}; valid: {', '.join(FORMATS)}")
    messages, where = _READERS[fmt](record)
    if system_prompt and (not messages or messages[0]["role"] != "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
        where.insert(0, "system_prompt")
    return validate(messages, where)
