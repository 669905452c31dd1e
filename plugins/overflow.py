"""Built-in overflow policies: what happens to a conversation longer than ``data.max_length``.

None of them cuts inside a message: they drop whole turns (a turn is a user message and the
assistant and tool messages that answer it), keep the system message, or split the
conversation into one example per assistant turn."""

from __future__ import annotations

import copy
from typing import Any

from tempering import BadRecordError, MaskingStrategy, OverflowPolicy, hookimpl

__all__ = ["register_overflow_policies"]


def drop(encoder: Any, messages: list[dict[str, Any]], encoded: Any, max_length: int) -> None:
    """The record is dropped and counted as ``too_long``."""
    return None


def truncate_turns(encoder: Any, messages: list[dict[str, Any]], encoded: Any,
                   max_length: int) -> Any:
    """The longest proper prefix ending after an assistant turn that fits and trains something.

    The whole conversation did not fit; it may end with any role (a trailing user turn too).
    """
    ends = [j + 1 for j, m in enumerate(messages) if m["role"] == "assistant"][::-1]
    for end in [e for e in ends if e < len(messages)]:
        try:
            enc = encoder.encode(messages[:end])
        except ValueError:  # the strategy selects nothing in this prefix
            continue
        if len(enc.input_ids) <= max_length and enc.num_supervised > 0:
            return enc
    raise BadRecordError("too_long", f"no leading whole turn fits in max_length {max_length}")


def _recent_turns(encoder: Any, messages: list[dict[str, Any]], max_length: int) -> Any:
    """``messages`` up to its last assistant turn, the oldest whole turns dropped until it fits
    (the system message stays)."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise BadRecordError("no_supervised_tokens", "no assistant turn to train")
    head = [messages[0]] if messages[0]["role"] == "system" else []
    body = messages[len(head):last + 1]
    starts = [i for i, m in enumerate(body) if m["role"] == "user"] or [0]
    for start in starts:
        try:
            enc = encoder.encode(head + body[start:])
        except ValueError:  # the strategy selects nothing in what is left
            continue
        if len(enc.input_ids) <= max_length and enc.num_supervised > 0:
            return enc
    raise BadRecordError("too_long", f"the last turn alone is longer than max_length "
                                     f"{max_length}")


def drop_oldest_turns(encoder: Any, messages: list[dict[str, Any]], encoded: Any,
                      max_length: int) -> Any:
    """The system message and the most recent whole turns that fit, up to the last assistant
    turn: the trained turn keeps as much of its context as fits."""
    return _recent_turns(encoder, messages, max_length)


def _final_turn_only(messages: Any) -> list[bool]:
    flags = [False] * len(messages)
    flags[max(i for i, m in enumerate(messages) if m["role"] == "assistant")] = True
    return flags


def split_per_turn(encoder: Any, messages: list[dict[str, Any]], encoded: Any,
                   max_length: int) -> list[Any]:
    """One example per trained assistant turn (the turns the masking strategy selects), each
    training that turn only, with as much of the history before it as fits (oldest whole turns
    dropped first, the system message kept)."""
    selected = encoder.masking.select(messages, **encoder.masking_options)
    one = copy.copy(encoder)  # the same template, training each example's final turn
    one.masking, one.masking_options = MaskingStrategy("final_turn", _final_turn_only), {}
    out = []
    for j, (m, chosen) in enumerate(zip(messages, selected, strict=True)):
        if m["role"] == "assistant" and (chosen or encoder.masking.all_tokens):
            try:
                out.append(_recent_turns(one, messages[:j + 1], max_length))
            except BadRecordError:
                continue  # this turn alone does not fit; the others still can
    if not out:
        raise BadRecordError("too_long", f"no assistant turn fits in max_length {max_length}")
    return out


@hookimpl
def register_overflow_policies() -> list[OverflowPolicy]:
    return [
        OverflowPolicy("drop", drop, "drop the conversation (counted as too_long)"),
        OverflowPolicy("truncate_turns", truncate_turns,
                       "keep the leading whole turns that fit, ending after an assistant turn"),
        OverflowPolicy("drop_oldest_turns", drop_oldest_turns,
                       "keep the system message and the most recent whole turns that fit"),
        OverflowPolicy("split_per_turn", split_per_turn,
                       "one example per assistant turn, each with the history that fits"),
    ]
