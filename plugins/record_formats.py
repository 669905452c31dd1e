"""Built-in record formats: alpaca, prompt/completion, OpenAI messages, ShareGPT and MT-Bench.

Each converter returns ``(messages, where)``: OpenAI-style ``{"role", "content"[, "train"]}``
dicts (messages records also keep ``tool_calls``, ``reasoning_content``, ``tool_call_id`` and
``name``) and, per message, its key path in the record, so the framework's checks name the field.
"""

from __future__ import annotations

from typing import Any

from tempering import BadRecordError, RecordFormat, hookimpl, to_messages

__all__ = ["format_example", "register_record_formats"]

_SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant",
    "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
    "tool": "tool", "function": "tool", "observation": "tool",
}
# Message fields kept as they are (templates render them): never silently dropped.
_KEPT_FIELDS = ("reasoning_content", "tool_call_id", "name")

Converted = tuple[list[dict[str, Any]], list[str]]


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


def alpaca(record: dict[str, Any]) -> Converted:
    instruction = _text(record, "instruction")
    extra = _text(record, "input", required=False)
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return ([{"role": "user", "content": prompt},
             {"role": "assistant", "content": _text(record, "output")}], ["instruction", "output"])


def prompt_completion(record: dict[str, Any]) -> Converted:
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


def _message(m: Any, i: int) -> dict[str, Any]:
    if not isinstance(m, dict):
        raise BadRecordError("bad_type", f"messages[{i}] must be an object", f"messages[{i}]")
    if "role" not in m:
        raise BadRecordError("missing_field", f"messages[{i}] has no 'role'", f"messages[{i}].role")
    calls = _tool_calls(m, f"messages[{i}]")
    try:  # an assistant turn that only calls tools may have no content
        content = _text(m, "content", required=not calls)
    except BadRecordError as exc:
        raise BadRecordError(exc.kind, f"messages[{i}]: {exc}", f"messages[{i}].content") from None
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
    return message


def messages(record: dict[str, Any]) -> Converted:
    out = [_message(m, i) for i, m in enumerate(_message_list(record, "messages"))]
    return out, [f"messages[{i}]" for i in range(len(out))]


def sharegpt(record: dict[str, Any]) -> Converted:
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
    # the framework's role and content checks name the ShareGPT keys
    return out, [(f"conversations[{i}].from", f"conversations[{i}].value")
                 for i in range(len(out))]


def mt_bench(record: dict[str, Any], answers: str = "reference") -> Converted:
    """MT-Bench: ``turns`` (the user's questions), and under ``answers`` (``reference``, or a
    model's answers) one answer per turn, placed after it. Without answers the conversation
    is the questions alone: a prompt for multi-turn generation (never trained)."""
    turns = record.get("turns")
    if not isinstance(turns, list) or not turns:
        raise BadRecordError("missing_field", "missing or empty field 'turns'", "turns")
    replies = record.get(answers)
    if replies is not None and (not isinstance(replies, list) or len(replies) != len(turns)):
        raise BadRecordError("bad_type", f"field {answers!r} must list one answer per turn "
                             f"({len(turns)})", answers)
    out, where = [], []
    for i, question in enumerate(turns):
        if not isinstance(question, str):
            raise BadRecordError("bad_type", f"turns[{i}] must be a string", f"turns[{i}]")
        out.append({"role": "user", "content": question})
        where.append(f"turns[{i}]")
        if replies is not None:
            out.append({"role": "assistant", "content": _text({"a": replies[i]}, "a")})
            where.append(f"{answers}[{i}]")
    return out, where


@hookimpl
def register_record_formats() -> list[RecordFormat]:
    # Registration order is the order `format: auto` tries them in.
    return [
        RecordFormat("messages", messages, lambda r: "messages" in r,
                     "OpenAI chat: {messages: [{role, content}, ...]}"),
        RecordFormat("sharegpt", sharegpt, lambda r: "conversations" in r,
                     "ShareGPT: {conversations: [{from, value}, ...]}"),
        RecordFormat("alpaca", alpaca, lambda r: "instruction" in r,
                     "Alpaca: {instruction, input?, output}"),
        RecordFormat("prompt_completion", prompt_completion,
                     lambda r: "prompt" in r and "completion" in r, "{prompt, completion}"),
        RecordFormat("mt_bench", mt_bench, lambda r: "turns" in r and "question_id" in r,
                     "MT-Bench: {turns: [...], reference?: [...]}"),
    ]


@hookimpl(trylast=True)
def format_example(record: dict[str, Any], source: Any, registry: Any) -> list[dict[str, Any]]:
    return to_messages(record, source.format.name, registry=registry,
                       system_prompt=source.system_prompt, options=source.format.options)
