"""Built-in overflow policies: what happens to a conversation longer than ``data.max_length``."""

from __future__ import annotations

from typing import Any

from tempering import BadRecordError, OverflowPolicy, hookimpl

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
    raise BadRecordError("no_supervised_tokens",
                         f"no leading whole turn fits in max_length {max_length}")


@hookimpl
def register_overflow_policies() -> list[OverflowPolicy]:
    return [
        OverflowPolicy("drop", drop, "drop the conversation (counted as too_long)"),
        OverflowPolicy("truncate_turns", truncate_turns,
                       "keep the leading whole turns that fit, ending after an assistant turn"),
    ]
